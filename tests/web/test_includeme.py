"""``config.include("pyramid_scheduler")`` (pyramid_scheduler/__init__.py and
pyramid_scheduler/web/registration.py): a deferred action with
introspectables, through a real ``Configurator(autocommit=False)``, and a web
process that imports nothing of the daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import webtest
from pyramid import testing
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationConflictError, ConfigurationError

from conftest import make_settings
from integration.sampleapp import jobs
from pyramid_scheduler import IScheduler, SchedulerProxy
from pyramid_scheduler.api import Event
from pyramid_scheduler.testing import TestingScheduler
from pyramid_scheduler.web.registration import PendingScheduler

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_var: Path) -> dict[str, str]:
    return make_settings(tmp_var)


def made(config: Configurator) -> Any:
    """Commit *config*; its scheduler (closed when the test ends by the caller)."""
    config.commit()
    return config.registry.scheduler


def test_a_bad_setting_fails_at_commit_naming_the_key(settings):
    config = Configurator(settings={**settings, "scheduler.lease.ttl": "abc"})
    config.include("pyramid_scheduler")  # the settings are not read yet
    with pytest.raises(ConfigurationError, match="scheduler.lease.ttl = 'abc'"):
        config.commit()


def test_a_bad_setting_fails_in_make_wsgi_app_before_the_app_serves(settings):
    config = Configurator(settings={**settings, "scheduler.qeueus": "jobs"})
    config.include("pyramid_scheduler")
    with pytest.raises(ConfigurationError, match="Unknown setting scheduler.qeueus"):
        config.make_wsgi_app()


def test_settings_changed_after_the_include_count(settings):
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.add_settings({"scheduler.queues": "mail reports"})
    config.registry.settings["scheduler.transactional"] = "false"
    scheduler = made(config)
    try:
        assert scheduler.queues == ("mail", "reports")
        assert scheduler.settings.transactional is False
        assert config.registry.getUtility(IScheduler) is scheduler
    finally:
        scheduler.close()


def test_before_the_commit_registry_scheduler_takes_listeners_only(settings):
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    pending = config.registry.scheduler
    assert isinstance(pending, PendingScheduler)
    heard: list[Event] = []
    pending.add_listener(heard.append, events=[Event.JOB_CREATED])
    pending.addListener(heard.append)  # the 0.3.4 name
    pending.removeListener(heard.append)
    with pytest.raises(AttributeError, match="made when the configuration is committed"):
        pending.add_async_job(jobs.noop)
    scheduler = made(config)
    try:
        assert isinstance(scheduler, SchedulerProxy)
        assert scheduler.listeners is pending.listeners
        assert pending.queues == ("jobs",)  # a reference taken before the commit stands for the scheduler
        # The listener was removed by the 0.3.4 name; add it again on the real one.
        scheduler.add_listener(heard.append)
        assert [listener for listener, *_ in scheduler.listeners._items] == [heard.append]
    finally:
        scheduler.close()


def test_an_autocommit_configurator_has_the_scheduler_at_once(settings):
    config = testing.setUp(settings=settings)
    try:
        config.include("pyramid_scheduler")
        assert isinstance(config.registry.scheduler, SchedulerProxy)
        config.registry.scheduler.close()
    finally:
        testing.tearDown()


def test_the_scheduler_and_declared_jobs_are_introspectable(tmp_var):
    settings = make_settings(
        tmp_var,
        **{
            "scheduler.broker.url": "redis://:broker-secret@127.0.0.1:6379/0",
            "scheduler.jobstore.url": "postgresql+psycopg://app:store-secret@127.0.0.1/test",
        },
    )
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.add_scheduled_job(jobs.record, minutes=10, id="tick", args=["oracle", "t"])
    scheduler = made(config)
    try:
        introspector = config.registry.introspector
        intr = introspector.get("scheduler", IScheduler)
        assert intr["queues"] == ("jobs",) and intr["combined"] is False
        assert intr["broker"] == "redis://:***@127.0.0.1:6379/0"
        assert intr["jobstore"] == "postgresql+psycopg://app:***@127.0.0.1/test"
        assert "secret" not in json.dumps({key: str(value) for key, value in intr.items()})
        job = introspector.get("scheduled jobs", "tick")
        assert job["id"] == "tick" and job["func"] is jobs.record and job["queue"] == "jobs"
        assert job["trigger"]["type"] == "interval" and job["trigger"]["minutes"] == 10
        assert [related.discriminator for related in introspector.related(job)] == [IScheduler]
        assert scheduler.declared["tick"].queue == "jobs"
    finally:
        scheduler.close()


def test_another_registration_of_the_scheduler_is_a_conflict(settings):
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.action(IScheduler, lambda: None)  # as another package registering its own would
    with pytest.raises(ConfigurationConflictError, match="IScheduler"):
        config.commit()


@pytest.mark.parametrize("testing_first", [False, True])
def test_the_testing_kit_wins_whichever_is_included_first(settings, testing_first):
    config = Configurator(settings=settings)
    for name in ("pyramid_scheduler.testing", "pyramid_scheduler")[:: 1 if testing_first else -1]:
        config.include(name)
    config.add_scheduled_job(jobs.record, minutes=5, id="tick", args=["oracle", "t"])
    scheduler = made(config)
    assert isinstance(scheduler, TestingScheduler)
    assert config.registry.getUtility(IScheduler) is scheduler
    assert "tick" in scheduler.declared


def test_request_scheduler_is_the_registry_scheduler(settings):
    def view(request: Any) -> dict[str, Any]:
        return {"same": request.scheduler is request.registry.scheduler, "queues": list(request.scheduler.queues)}

    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
        config.add_route("where", "/where")
        config.add_view(view, route_name="where", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    try:
        assert app.get("/where").json == {"same": True, "queues": ["jobs"]}
    finally:
        app.app.registry.scheduler.close()


# -- the web process imports nothing of the daemon ---------------------------------------

PROBE = textwrap.dedent(
    """
    import json, sys
    from pyramid.config import Configurator
    from integration.sampleapp import jobs

    settings = json.loads(sys.argv[1])
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
        config.add_scheduled_job(jobs.record, minutes=10, id="tick", args=["oracle", "t"])
    app = config.make_wsgi_app()
    scheduler = app.registry.scheduler
    job_id = scheduler.add_async_job(jobs.noop, args=[1])
    scheduler.shutdown()
    print(json.dumps(sorted(sys.modules)))
    """
)


def modules_after_include(settings: dict[str, str]) -> set[str]:
    """``sys.modules`` of a fresh interpreter that built an application with
    *settings* and added a job."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def daemon_side(modules: set[str]) -> set[str]:
    return {
        name
        for name in modules
        if name.startswith(("pyramid_scheduler.daemon", "apscheduler.schedulers", "apscheduler.executors"))
    }


def test_a_web_process_imports_nothing_of_the_daemon(settings):
    modules = modules_after_include(settings)
    assert "pyramid_scheduler.web.proxy" in modules
    assert daemon_side(modules) == set()


def test_combined_mode_imports_the_daemon(settings):
    modules = modules_after_include({**settings, "scheduler.combined": "true"})
    assert {"pyramid_scheduler.daemon.service", "apscheduler.schedulers.base", "apscheduler.executors.pool"} <= (
        daemon_side(modules)
    )
