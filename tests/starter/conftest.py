"""The starter's tests/conftest.py (sqlalchemy backend), with one fixture
added for pyramid_scheduler: ``scheduler``.

Adapted to live inside this test suite: the INI files are copied into a
temporary project folder (so the SQLite files are written there, not here),
and there is no ``--ini`` option (a nested conftest cannot add one).
"""
import os
import shutil

import alembic
import alembic.config
import alembic.command
from pyramid.paster import get_appsettings
from pyramid.scripting import prepare
from pyramid.testing import DummyRequest, testConfig
import pytest
import transaction
import webtest

from .starterapp import main
from .starterapp import models
from .starterapp.models.meta import Base

HERE = os.path.dirname(os.path.abspath(__file__))


def make_project(path):
    """A project folder as the starter renders one, in *path*: its INI
    files, and its migrations in ``starterapp/alembic`` (copied: Alembic
    writes new revisions there). The package itself is imported from here."""
    for name in ('development.ini', 'testing.ini'):
        shutil.copy(os.path.join(HERE, name), path / name)
    shutil.copytree(os.path.join(HERE, 'starterapp', 'alembic'), path / 'starterapp' / 'alembic',
                    ignore=shutil.ignore_patterns('__pycache__'))
    return path


@pytest.fixture(scope='session')
def ini_file(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp('starter'))
    return str(project / 'testing.ini')

@pytest.fixture(scope='session')
def app_settings(ini_file):
    return get_appsettings(ini_file)

@pytest.fixture(scope='session')
def dbengine(app_settings, ini_file):
    engine = models.get_engine(app_settings)

    alembic_cfg = alembic.config.Config(ini_file)
    Base.metadata.drop_all(bind=engine)
    alembic.command.stamp(alembic_cfg, 'base', purge=True)

    # run migrations to initialize the database
    # depending on how we want to initialize the database from scratch
    # we could alternatively call:
    # Base.metadata.create_all(bind=engine)
    # alembic.command.stamp(alembic_cfg, "head")
    alembic.command.upgrade(alembic_cfg, "head")

    yield engine

    Base.metadata.drop_all(bind=engine)
    alembic.command.stamp(alembic_cfg, 'base', purge=True)
    engine.dispose()

@pytest.fixture(scope='session')
def app(app_settings, dbengine):
    return main({}, dbengine=dbengine, **app_settings)

@pytest.fixture
def tm():
    tm = transaction.TransactionManager(explicit=True)
    tm.begin()
    tm.doom()

    yield tm

    tm.abort()

@pytest.fixture
def dbsession(app, tm):
    session_factory = app.registry['dbsession_factory']
    return models.get_tm_session(session_factory, tm)

@pytest.fixture
def testapp(app, tm, dbsession):
    # override request.dbsession and request.tm with our own
    # externally-controlled values that are shared across requests but aborted
    # at the end
    testapp = webtest.TestApp(app, extra_environ={
        'HTTP_HOST': 'example.com',
        'tm.active': True,
        'tm.manager': tm,
        'app.dbsession': dbsession,
    })

    return testapp

@pytest.fixture
def app_request(app, tm, dbsession):
    """
    A real request.

    This request is almost identical to a real request but it has some
    drawbacks in tests as it's harder to mock data and is heavier.

    """
    with prepare(registry=app.registry) as env:
        request = env['request']
        request.host = 'example.com'

        # without this, request.dbsession will be joined to the same transaction
        # manager but it will be using a different sqlalchemy.orm.Session using
        # a separate database transaction
        request.dbsession = dbsession
        request.tm = tm

        yield request

@pytest.fixture
def dummy_request(tm, dbsession):
    """
    A lightweight dummy request.

    This request is ultra-lightweight and should be used only when the request
    itself is not a large focus in the call-stack.  It is much easier to mock
    and control side-effects using this object, however:

    - It does not have request extensions applied.
    - Threadlocals are not properly pushed.

    """
    request = DummyRequest()
    request.host = 'example.com'
    request.dbsession = dbsession
    request.tm = tm

    return request

@pytest.fixture
def dummy_config(dummy_request):
    """
    A dummy :class:`pyramid.config.Configurator` object.  This allows for
    mock configuration, including configuration for ``dummy_request``, as well
    as pushing the appropriate threadlocals.

    """
    with testConfig(request=dummy_request) as config:
        yield config

@pytest.fixture
def scheduler(app):
    """The application's TestingScheduler (``pyramid.includes =
    pyramid_scheduler.testing`` in testing.ini), empty for each test: the
    session-scoped ``app`` would otherwise keep every test's jobs."""
    scheduler = app.registry.scheduler
    scheduler.reset()
    yield scheduler
    scheduler.reset()
