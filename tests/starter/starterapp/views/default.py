from pyramid.response import Response
from pyramid.view import view_config
import sqlalchemy as sa

from .. import jobs
from .. import models


@view_config(route_name='home', renderer='json')
def my_view(request):
    try:
        query = sa.select(models.MyModel).where(models.MyModel.name == 'one')
        one = request.dbsession.execute(query).scalar_one()
    except sa.exc.SQLAlchemyError:
        return Response(db_err_msg, content_type='text/plain', status=500)
    return {'one': one, 'project': 'starterapp'}


@view_config(route_name='models', request_method='POST', renderer='json')
def add_model(request):
    model = models.MyModel(name=request.POST['name'], value=0)
    request.dbsession.add(model)
    request.dbsession.flush()  # gives model.id
    # Held until pyramid_tm commits this request: the job finds the row.
    job_id = request.scheduler.add_async_job(jobs.bump, args=[model.id])
    return {'id': model.id, 'job_id': job_id}


@view_config(route_name='model', renderer='json')
def show_model(request):
    model = request.dbsession.get(models.MyModel, int(request.matchdict['id']))
    if model is None:
        return Response(status=404)
    return model


db_err_msg = """\
Pyramid is having a problem using your SQL database.  The problem
might be caused by one of the following things:

1.  You may need to initialize your database tables with `alembic`.
    Check your README.txt for descriptions and try to run it.

2.  Your database server may not be running.  Check that the
    database server referred to by the "sqlalchemy.url" setting in
    your "development.ini" file is running.

After you fix the problem, please restart the Pyramid application to
try it again.
"""
