"""Config-time schedules: ``config.add_scheduled_job`` and ``@scheduled_job``
through a real ``Configurator(autocommit=False)`` (nothing is published)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationConflictError, ConfigurationError

from conftest import make_settings
from integration.sampleapp import jobs
from producers import published
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.engine import Engine


@pytest.fixture
def config(tmp_var: Path):
    config = Configurator(settings={**make_settings(tmp_var), "sampleapp.marker": "m"})
    config.include("pyramid_scheduler")
    yield config
    close = getattr(config.registry.scheduler, "close", None)  # none until a commit made the scheduler
    if close is not None:
        close()


def test_directive_declares_with_a_stable_id(config, tmp_var):
    config.add_scheduled_job(jobs.record, minutes=10, args=["oracle", "t"])
    config.add_scheduled_job("integration.sampleapp.jobs.fail", cron="*/5 * * * *", id="five", args=["oracle", "f"])
    config.commit()
    declared = config.registry.scheduler.declared
    assert sorted(declared) == ["five", "integration.sampleapp.jobs:record"]
    record = declared["integration.sampleapp.jobs:record"]
    assert record.trigger["type"] == "interval" and record.trigger["minutes"] == 10
    assert declared["five"].trigger["crontab"] == "*/5 * * * *"
    assert record.mid.startswith("declared:")
    intr = config.registry.introspector.get("scheduled jobs", "five")
    assert intr["func"] is jobs.fail and intr["queue"] == "jobs"
    assert published(tmp_var) == []  # web processes only record declarations


def test_same_declaration_same_digest_changed_one_differs(tmp_var):
    def mids(**params):
        config = Configurator(settings=make_settings(tmp_var))
        config.include("pyramid_scheduler")
        config.add_scheduled_job(jobs.record, id="tick", args=["o", "t"], **params)
        config.commit()
        config.registry.scheduler.close()
        return config.registry.scheduler.declared["tick"].mid

    assert mids(seconds=5) == mids(seconds=5)
    assert mids(seconds=5) != mids(seconds=6)


def test_duplicate_ids_conflict(config):
    config.add_scheduled_job(jobs.record, minutes=1, id="dup", args=["o", "a"])
    config.add_scheduled_job(jobs.record, hours=1, id="dup", args=["o", "b"])
    with pytest.raises(ConfigurationConflictError, match="dup"):
        config.commit()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"minutes": 1, "cron": "* * * * *"}, "exactly one"),
        ({"args": ["o", "t"]}, "give trigger="),
        ({"trigger": "weekly", "minutes": 1}, "trigger: expected .date., .interval. or .cron., got .weekly."),
        ({"minutes": 1, "args": ["o", "t"], "immediate": True, "id": "imm"}, "never published"),
        ({"minutes": 1, "cron": "* * * * *", "crontab": "* * * * *", "trigger": "cron"}, "not both"),
    ],
)
def test_what_needs_no_scheduler_fails_at_the_directive(config, params, message):
    with pytest.raises(ConfigurationError, match=message):
        config.add_scheduled_job(jobs.record, **params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cron": "61 * * * *", "id": "bad-cron"}, "scheduled job bad-cron: .*"),
        ({"minutes": 1, "args": ["only-one"], "id": "bad-args"}, "scheduled job bad-args: func .*tag"),
        ({"minutes": 1, "args": ["o", "t"], "queue": "nope", "id": "q"}, "scheduled job q: .*nope"),
    ],
)
def test_what_add_job_checks_fails_at_commit(config, params, message):
    """The queue is known once the settings are read (at commit), so the
    checks of ``add_*_job`` run then: still before the application serves."""
    config.add_scheduled_job(jobs.record, **params)
    with pytest.raises(ConfigurationError, match=message):
        config.commit()


def test_scan_finds_decorated_jobs(config):
    config.scan("integration.sampleapp.scheduled")
    config.commit()
    declared = config.registry.scheduler.declared
    assert sorted(declared) == ["cleanup", "integration.sampleapp.scheduled:every_five_minutes", "nightly-report"]
    assert declared["cleanup"].trigger["minutes"] == 10 and declared["cleanup"].options["coalesce"] is True
    assert declared["nightly-report"].trigger["crontab"] == "0 3 * * *"
    # The request parameter is the runner's: not part of the declaration.
    assert declared["nightly-report"].args == [] and declared["nightly-report"].kwargs == {}


def test_a_declaration_moved_to_another_queue_moves(tmp_var, caplog):
    settings = {**make_settings(tmp_var), "scheduler.queues": "jobs reports"}

    def start(queues, queue, broken=False):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
            config.add_scheduled_job(
                jobs.record, id="weekly", crontab="0 3 * * mon", queue=queue, args=["oracle", "weekly"]
            )
        proxy = config.registry.scheduler
        if broken:  # stored by a daemon whose code lost the function
            proxy.declared["broken"] = replace(proxy.declared["weekly"], id="broken", func="nowhere:gone")
        engine = Engine(proxy, queues)
        events = []
        proxy.add_listener(events.append)
        assert engine.try_acquire()
        engine.start()
        engine.stop(timeout=1)
        proxy.close()
        return proxy, events

    proxy, events = start(("jobs", "reports"), "jobs", broken=True)
    assert proxy.get_job("weekly")["queue"] == "jobs" and proxy.get_job("broken") is None
    assert "job broken (queue jobs): declared, but could not be stored" in caplog.text
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_CREATED]
    # Declared on reports now, but only the reports daemon starts: it leaves jobs alone.
    proxy, _ = start(("reports",), "reports")
    assert proxy.get_job("weekly")["queue"] == "jobs" and proxy.get_job("weekly")["status"] == "scheduled"
    assert "still stored on queue jobs" in caplog.text
    # The jobs daemon removes it from jobs ...
    proxy, events = start(("jobs",), "reports")
    assert proxy.get_job("weekly")["status"] == "canceled"
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_REMOVED]
    # ... and the reports daemon stores it there.
    proxy, events = start(("reports",), "reports")
    record = proxy.get_job("weekly")
    assert record["queue"] == "reports" and record["status"] == "scheduled"
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_CREATED]


def test_an_unchanged_declaration_is_left_alone_a_changed_one_updated(tmp_var, caplog):
    caplog.set_level(logging.INFO, logger="pyramid_scheduler.daemon.reconcile")
    settings = make_settings(tmp_var)

    def start(minutes):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
            config.add_scheduled_job(jobs.record, id="sync", minutes=minutes, args=["oracle", "sync"])
        proxy = config.registry.scheduler
        engine = Engine(proxy)
        events = []
        proxy.add_listener(events.append)
        assert engine.try_acquire()
        engine.start()
        next_run = engine.aps.get_job("sync").next_run_time
        engine.stop(timeout=1)
        record = proxy.get_job("sync")
        proxy.close()
        return record, next_run, [e.type for e in events if e.get("job_id") == "sync"]

    first, first_run, events = start(10)
    assert events == [Event.JOB_CREATED]
    again, again_run, events = start(10)
    assert events == [] and again_run == first_run
    assert (again["created_at"], again["updated_at"]) == (first["created_at"], first["updated_at"])
    assert "declaration changed" not in caplog.text
    changed, changed_run, events = start(20)
    assert events == [] and changed["trigger"]["minutes"] == 20 and changed_run > first_run
    assert changed["created_at"] == first["created_at"] and changed["status"] == "scheduled"
    assert "job sync (queue jobs): declaration changed; stored job updated" in caplog.text


def test_calendar_keywords_declare_a_cron_job(config):
    config.add_scheduled_job(jobs.record, weekdays=[1, 5], time_of_day="07:30", id="cal", args=["o", "c"])
    config.commit()
    trigger = config.registry.scheduler.declared["cal"].trigger
    assert (trigger["type"], trigger["day_of_week"], trigger["hour"], trigger["minute"]) == ("cron", "mon,fri", 7, 30)
