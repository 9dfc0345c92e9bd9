"""The starter's functional tests, and the view -> job -> row path on its
fixtures: the request's transaction is the test's, which never commits."""
from .starterapp import models


def test_my_view_success(testapp, dbsession):
    model = models.MyModel(name='one', value=55)
    dbsession.add(model)
    dbsession.flush()

    res = testapp.get('/', status=200)
    assert res.body

def test_notfound(testapp):
    res = testapp.get('/badurl', status=404)
    assert res.status_code == 404

def test_add_model_schedules_a_job_that_updates_the_row(
        testapp, app_request, dbsession, scheduler):
    res = testapp.post('/models', {'name': 'two'}, status=200)

    # Held by the test's transaction: published only if it committed.
    [job] = scheduler.held(app_request.tm)
    assert job.id == res.json['job_id']
    assert job.func == 'starter.starterapp.jobs:bump'
    assert job.args == [res.json['id']]
    assert scheduler.get_job(job.id) is None

    # Run inside the test's transaction, with the test's session.
    [run] = scheduler.run_pending(request=app_request)
    assert run['status'] == 'done'
    assert run['result'] == 1
    model = dbsession.get(models.MyModel, res.json['id'])
    assert model.value == 1
    assert scheduler.get_job(job.id)['status'] == 'done'

def test_each_test_starts_with_no_jobs(testapp, app_request, scheduler):
    assert scheduler.jobs == {}
    assert scheduler.held(app_request.tm) == []
    assert scheduler.run_pending(request=app_request) == []

def test_the_previous_tests_rows_were_rolled_back(dbsession):
    query = models.MyModel.__table__.select()
    assert dbsession.execute(query).all() == []
