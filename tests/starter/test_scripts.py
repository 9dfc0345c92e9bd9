"""The starter's ``pshell.setup`` and ``initialize_db.main``, run for real
on development.ini (the real scheduler, the SQL broker in ``var/``): a job
added inside ``request.tm`` is published when it commits, never when it
aborts."""
import alembic.command
import alembic.config
import pytest
from pyramid.paster import bootstrap
from pyramid.threadlocal import manager as threadlocal_manager
import sqlalchemy as sa
from producers import published

from .conftest import make_project
from .starterapp import jobs, models
from .starterapp.pshell import setup
from .starterapp.scripts import initialize_db


@pytest.fixture
def project(tmp_path):
    """A rendered project whose database is migrated (``alembic upgrade head``)."""
    make_project(tmp_path)
    alembic.command.upgrade(alembic.config.Config(str(tmp_path / 'development.ini')), 'head')
    yield tmp_path
    threadlocal_manager.clear()  # initialize_db's bootstrap() never closes


def published_requests(project):
    return [request for _, request in published(project / 'var', 'scheduler-broker.sqlite')]


def sent(project):
    return [(request.op, request.func, request.args) for request in published_requests(project)]


def rows(project):
    engine = sa.create_engine(f"sqlite:///{project / 'starterapp.sqlite'}")
    with engine.connect() as conn:
        found = conn.execute(sa.select(models.MyModel.id, models.MyModel.name)).all()
    engine.dispose()
    return [tuple(row) for row in found]


def test_initialize_db_sends_its_job_when_it_commits_and_not_when_it_fails(project):
    ini = str(project / 'development.ini')
    initialize_db.main(['initialize_starterapp_db', ini])
    assert rows(project) == [(1, 'one')]
    assert sent(project) == [('add', 'starter.starterapp.jobs:bump', [1])]

    # Run again: the row's unique name fails the commit; its job is dropped.
    with pytest.raises(sa.exc.IntegrityError):
        initialize_db.main(['initialize_starterapp_db', ini])
    assert rows(project) == [(1, 'one')]
    assert sent(project) == [('add', 'starter.starterapp.jobs:bump', [1])]


def test_pshell_holds_jobs_until_commit_and_drops_them_on_abort(project):
    with bootstrap(str(project / 'development.ini')) as env:
        setup(env)  # request.tm.begin(), as pshell does
        tm, dbsession = env['tm'], env['dbsession']
        scheduler = env['request'].scheduler

        model = models.MyModel(name='kept', value=0)
        dbsession.add(model)
        dbsession.flush()
        kept = model.id
        scheduler.add_async_job(jobs.bump, args=[kept])
        assert sent(project) == []
        tm.commit()
        assert sent(project) == [('add', 'starter.starterapp.jobs:bump', [kept])]

        tm.begin()
        dropped = models.MyModel(name='dropped', value=0)
        dbsession.add(dropped)
        dbsession.flush()
        scheduler.add_async_job(jobs.bump, args=[dropped.id])
        tm.abort()
        assert sent(project) == [('add', 'starter.starterapp.jobs:bump', [kept])]
        assert rows(project) == [(kept, 'kept')]

        # A savepoint rolled back drops the jobs added after it.
        tm.begin()
        scheduler.add_async_job(jobs.bump, args=[kept], id='before')
        savepoint = tm.savepoint()
        scheduler.add_async_job(jobs.bump, args=[kept], id='after')
        savepoint.rollback()
        tm.commit()
        assert [request.id for request in published_requests(project)][1:] == ['before']
