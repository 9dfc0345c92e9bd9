"""The starter project served for real: ``pserve development.ini`` and
``pscheduler development.ini`` as subprocesses, on a SQLite file the
application and the job store share; then Alembic's autogenerate on that
database."""
import json
import socket
import sys
from pathlib import Path
import urllib.parse
import urllib.request

import alembic.command
import alembic.config
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pyramid.paster import bootstrap
from pyramid.threadlocal import manager as threadlocal_manager
import pytest
import sqlalchemy as sa

from daemons import Daemon, pscheduler_argv, wait_until
from pyramid_scheduler.alembic import is_scheduler_table

from .conftest import make_project
from .starterapp.models.meta import Base
from .starterapp.scripts import initialize_db

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Served:
    def __init__(self, project, port):
        self.project = project
        self.ini = project / 'development.ini'
        self.url = f'http://127.0.0.1:{port}'
        self.daemons = []

    def start(self, name, argv):
        daemon = Daemon([*argv, str(self.ini)], self.project / f'{name}.log', self.project)
        self.daemons.append(daemon)
        return daemon

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def row(self, model_id, value):
        """The row of ``GET /models/ID`` once its value is *value*, else None."""
        row = self.get(f'/models/{model_id}')
        return row if row and row['value'] == value else None

    def post(self, path, **form):
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(self.url + path, data=data, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp('served'))
    port = free_port()
    ini = project / 'development.ini'
    ini.write_text(ini.read_text().replace('listen = localhost:6543', f'listen = 127.0.0.1:{port}'))
    # As the starter's README says: migrate, then initialize_starterapp_db.
    alembic.command.upgrade(alembic.config.Config(str(ini)), 'head')
    initialize_db.main(['initialize_starterapp_db', str(ini)])  # sends bump(1) on commit
    threadlocal_manager.clear()  # its bootstrap() never closes

    served = Served(project, port)
    try:
        pscheduler = served.start('pscheduler', pscheduler_argv(script=True))
        pserve = served.start('pserve', [sys.executable, '-m', 'pyramid.scripts.pserve'])
        pscheduler.wait_consuming()
        wait_until(lambda: served.get('/models/1'), 'pserve answering', alive=[pserve])
        yield served
    finally:
        for daemon in served.daemons:
            daemon.close()
            print(f'--- {daemon.log_path.name}\n{daemon.log()}')


def test_a_view_schedules_a_job_that_updates_its_row(served):
    created = served.post('/models', name='two')
    assert created['job_id']

    row = wait_until(lambda: served.row(created['id'], 1), 'the job to update the row',
                     alive=served.daemons)
    assert row == {'id': created['id'], 'name': 'two', 'value': 1}

    # The job store is in the application's database; any process reads it.
    with bootstrap(str(served.ini)) as env:
        job = env['request'].scheduler.get_job(created['job_id'])
    assert job['status'] == 'done'
    assert job['result'] == 1


def test_the_job_initialize_db_sent_found_its_committed_row(served):
    row = wait_until(lambda: served.row(1, 2), "initialize_db's job to update its row",
                     alive=served.daemons)
    assert row == {'id': 1, 'name': 'one', 'value': 2}


def test_autogenerate_leaves_the_scheduler_tables_alone(served):
    engine = sa.create_engine(f"sqlite:///{served.project / 'starterapp.sqlite'}")
    with engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        # What env.py would get without the filters: the scheduler's tables dropped.
        unfiltered = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert 'models' in tables
    assert 'pyramid_scheduler_jobs' in tables  # made by pscheduler in the app's database
    assert {change[1].name for change in unfiltered if change[0] == 'remove_table'} == \
        {name for name in tables if is_scheduler_table(name)}

    config = alembic.config.Config(str(served.ini))
    script = alembic.command.revision(config, message='no changes', autogenerate=True)
    text = Path(script.path).read_text()
    upgrade = text[text.index('def upgrade():'):text.index('def downgrade():')]
    downgrade = text[text.index('def downgrade():'):]
    for body in (upgrade, downgrade):
        assert 'op.' not in body, text
        assert '    pass\n' in body, text
    assert 'pyramid_scheduler' not in text
