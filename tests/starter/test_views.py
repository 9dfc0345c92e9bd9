"""The starter's view tests, on ``app_request``."""
from .starterapp import models
from .starterapp.views.default import add_model, my_view
from .starterapp.views.notfound import notfound_view


def test_my_view_failure(app_request):
    info = my_view(app_request)
    assert info.status_int == 500

def test_my_view_success(app_request, dbsession):
    model = models.MyModel(name='one', value=55)
    dbsession.add(model)
    dbsession.flush()

    info = my_view(app_request)
    assert app_request.response.status_int == 200
    assert info['one'].name == 'one'
    assert info['project'] == 'starterapp'

def test_notfound_view(app_request):
    info = notfound_view(app_request)
    assert app_request.response.status_int == 404
    assert info == {}

def test_add_model_view(app_request, dbsession, scheduler):
    app_request.method = 'POST'
    app_request.POST['name'] = 'three'
    info = add_model(app_request)

    assert [job.id for job in scheduler.held(app_request.tm)] == [info['job_id']]
    [run] = scheduler.run_pending(request=app_request)
    assert run['status'] == 'done'
    assert dbsession.get(models.MyModel, info['id']).value == 1
