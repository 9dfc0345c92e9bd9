"""Tasks end to end: a WebTest view sends ``add.delay()`` inside pyramid_tm's
transaction, a real ``pscheduler`` runs it, and the handle made from the
id the view returned sees the result (or the error); ``pscheduler`` refuses
an application with ``scheduler.enabled = false``."""

from __future__ import annotations

import pytest
import webtest

from daemons import DEADLINE, wait_until, write_ini
from integration.sampleapp.tasks import main
from pyramid_scheduler import JobHandle
from pyramid_scheduler.scripts import EXIT_DISABLED

pytestmark = [pytest.mark.integration]


@pytest.fixture
def tasks_app(make_harness, tmp_path, request):
    broker, store = getattr(request, "param", ("sqlite", "sqlite"))
    harness = make_harness(broker=broker, store=store)
    ini = write_ini(tmp_path / "tasks.ini", harness.settings, app="call:integration.sampleapp.tasks:main")
    daemon = harness.start(ini=ini)
    wsgi = main({}, **harness.settings)
    harness.proxies.append(wsgi.registry.scheduler)
    return daemon, webtest.TestApp(wsgi), wsgi.registry.scheduler


@pytest.mark.parametrize(
    "tasks_app", [("sqlite", "sqlite"), ("redis", "postgresql")], ids=["sqlite", "redis-postgresql"], indirect=True
)
def test_a_view_s_delay_runs_in_the_daemon_and_its_handle_sees_the_result(tasks_app):
    daemon, app, scheduler = tasks_app
    sent = app.get("/add", {"x": "2", "y": "3"}).json
    # Inside the view's transaction the message is held: no record yet.
    assert sent["status"] == "pending"
    handle = JobHandle(sent["id"], scheduler)
    assert handle.wait(DEADLINE) is handle
    assert (handle.status, handle.ready, handle.result, handle.error) == ("done", True, 5, None)
    assert handle.record["args"] == [2, 3]
    assert daemon.proc.poll() is None


def test_a_failing_task_s_handle_carries_the_exception_s_message(tasks_app):
    _daemon, app, scheduler = tasks_app
    handle = JobHandle(app.get("/fail", {"message": "no such order 7"}).json["id"], scheduler)
    handle.wait(DEADLINE)
    assert handle.status == "failed" and handle.ready
    assert handle.error == "ValueError: no such order 7"
    assert handle.result is None
    assert "Traceback (most recent call last)" in handle.traceback


def test_a_periodic_declaration_with_start_now_runs_when_the_daemon_stores_it(make_harness, tmp_path):
    harness = make_harness()
    settings = {**harness.settings, "tasksapp.scan": "true"}
    ini = write_ini(tmp_path / "tasks.ini", settings, app="call:integration.sampleapp.tasks:main")
    daemon = harness.start(ini=ini)
    scheduler = harness.proxy()
    # Every 10 minutes, and once at once: the run comes without waiting.
    harness.wait_job(scheduler, "tick-now", {"scheduled"}, alive=(daemon,))
    wait_until(lambda: scheduler.get_runs("tick-now", status="done"), "tick-now's first run", alive=(daemon,))
    record = scheduler.get_job("tick-now")
    assert record["runs"] == 1 and record["result"] == "tick"
    assert record["next_run_time"] - record["last_run_at"] == pytest.approx(600, abs=5)
    # Without start_now, the first run is an interval away.
    assert scheduler.get_job("tock-later")["runs"] == 0
    assert scheduler.get_runs("tock-later") == []


def test_pscheduler_refuses_a_disabled_scheduler(make_harness, tmp_path):
    harness = make_harness(enabled="false")
    code, output = harness.run()
    assert code == EXIT_DISABLED
    assert "scheduler.enabled = false" in output
