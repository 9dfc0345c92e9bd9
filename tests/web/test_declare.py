"""Config-time schedules: ``config.add_scheduled_job`` and ``@scheduled_job``
through a real ``Configurator(autocommit=False)`` (nothing is published)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationConflictError, ConfigurationError

from conftest import make_settings
from integration.sampleapp import jobs
from producers import published


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


def test_calendar_keywords_declare_a_cron_job(config):
    config.add_scheduled_job(jobs.record, weekdays=[1, 5], time_of_day="07:30", id="cal", args=["o", "c"])
    config.commit()
    trigger = config.registry.scheduler.declared["cal"].trigger
    assert (trigger["type"], trigger["day_of_week"], trigger["hour"], trigger["minute"]) == ("cron", "mon,fri", 7, 30)
