"""Catch-up of overdue runs (:mod:`pyramid_scheduler.daemon.catchup`): the planner the
daemon's jobs use, on the triggers the daemon builds from wire specs; the
policies through a real engine; and the catch-up settings (the ``catch_up``
option's checks are in :mod:`wire.test_options`, the cron trigger across DST
changes in :mod:`triggers.test_cron`).

The system clock cannot be changed in a test, so a clock jump is a job whose
next run time is far in the past.
"""

from __future__ import annotations

import io
import pickle
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pyramid.exceptions import ConfigurationError
from test_engine import (  # noqa: F401 - fixtures
    RUNS,
    engine_factory,
    proxy_factory,
    record,
    types_for,
    wait_for,
)

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.catchup import CatchUpJob, ScheduledRun, job_options, plan_run_times
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.store.unpickle import JobUnpickler
from pyramid_scheduler.triggers.build import build_trigger, trigger_spec
from pyramid_scheduler.wire.messages import JobRequest

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def counting(trigger):
    """The real trigger, counting the planner's calls to it (``.calls``)."""
    counter = [0]

    class Counting(type(trigger)):
        __slots__ = ()
        calls = property(lambda self: counter[0])

        def get_next_fire_time(self, previous, now):
            counter[0] += 1
            return super().get_next_fire_time(previous, now)

    trigger.__class__ = Counting
    return trigger


def interval_every_second(start):
    return build_trigger(trigger_spec("interval", UTC, start_date=start, seconds=1), UTC)


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesce", "each"])
def test_a_clock_jump_of_30_days_plans_a_bounded_number_of_runs(coalesce):
    """An interval job of 1 s whose next run time is 30 days old (a suspended
    VM): 2.6 million fire times are due. APScheduler 3 would build a list of
    all of them; the planner enumerates at most catch_up_limit, summarises the
    rest in one Missed span with its exact count, and ends on the latest fire
    time, so the job moves to its first fire time after now."""
    now = datetime.now(UTC)
    start = now - timedelta(days=31)
    trigger = counting(interval_every_second(start))
    behind = start + timedelta(days=1)
    tracemalloc.start()
    began = time.perf_counter()
    runs = plan_run_times(trigger, behind, now, coalesce, limit=100)
    elapsed = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    due = int((now - behind) / timedelta(seconds=1)) + 1
    print(
        f"\nclock jump of 30 days, interval 1 s, coalesce={coalesce}: {due} fire times due; "
        f"planned in {elapsed * 1000:.1f} ms, {trigger.calls} trigger calls, "
        f"peak memory {peak / 1024:.0f} KiB, {len(runs)} run(s) handed to the executor"
    )
    assert trigger.calls < 200  # not millions: bounded whatever the gap
    assert peak < 2 * 1024 * 1024
    latest = runs[-1]
    assert latest <= now < latest + timedelta(seconds=1)
    assert trigger.get_next_fire_time(latest, now) > now  # what _process_jobs stores next
    skipped = [missed for run in runs for missed in run.skipped]
    span = skipped[-1]
    if coalesce:
        assert len(runs) == 1 and len(skipped) == 101  # 100 one by one, then the span
        assert span.count == due - 101
    else:
        assert len(runs) == 101 and len(skipped) == 1  # 100 runs, the span, the latest
        assert [run - behind for run in runs[:3]] == [timedelta(seconds=s) for s in range(3)]
        assert span.count == due - 101
    assert span.first == behind + timedelta(seconds=100)
    assert span.last == latest - timedelta(seconds=1)
    assert "catch_up_limit (100)" in span.reason and f"{span.count} runs" in span.reason


def test_a_clock_jump_on_a_cron_job_is_bounded_too():
    now = datetime.now(UTC)
    trigger = counting(build_trigger({"type": "cron", "timezone": "Europe/Berlin", "minute": "*"}, UTC))
    runs = plan_run_times(trigger, now - timedelta(days=30), now, True, limit=10)
    assert trigger.calls < 100
    assert len(runs) == 1 and len(runs[0].skipped) == 11
    assert runs[0] <= now < runs[0] + timedelta(minutes=1)
    assert runs[0].skipped[-1].count is None  # not counted for cron: "runs due from ... up to ..."
    assert trigger.get_next_fire_time(runs[0], now) > now


def test_a_job_that_coalesces_across_a_dst_change_after_downtime_runs_once():
    """The daemon was down over the autumn change: one run, the others missed."""
    trigger = build_trigger({"type": "cron", "timezone": "Europe/Berlin", "hour": 2, "minute": 30}, UTC)
    due = datetime(2026, 10, 23, 2, 30, tzinfo=BERLIN)
    now = datetime(2026, 10, 27, 12, 0, tzinfo=BERLIN)
    runs = plan_run_times(trigger, due, now, coalesce=True)
    assert [run.plain() for run in runs] == [datetime(2026, 10, 27, 2, 30, tzinfo=BERLIN)]
    assert [m.first.astimezone(BERLIN).day for m in runs[0].skipped] == [23, 24, 25, 26]


def test_policies_map_onto_apscheduler_options():
    base = {"max_instances": 1, "misfire_grace_time": 30, "coalesce": False}
    assert job_options("skip", base) == base
    assert job_options("once", base) == {"max_instances": 1, "misfire_grace_time": None, "coalesce": True}
    assert job_options("all", base) == {"max_instances": 1, "misfire_grace_time": None, "coalesce": False}


def test_catch_up_job_has_apschedulers_layout():
    assert CatchUpJob.__slots__ == ()
    assert isinstance(ScheduledRun.of(datetime.now(UTC)), datetime)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "interval", "timezone": "UTC", "seconds": 1},
        {"type": "cron", "timezone": "Europe/Berlin", "second": "*"},
    ],
    ids=["interval", "cron"],
)
def test_next_run_times_derived_from_a_planned_run_are_plain_datetimes(spec):
    """APScheduler stores trigger.get_next_fire_time(run_times[-1], now) in
    the job store, whose rows the restricted unpickler loads: a datetime
    subclass there would park every recurring job after its first run."""
    now = datetime.now(UTC)
    trigger = build_trigger(spec, UTC, anchor=now - timedelta(seconds=10))
    run = ScheduledRun.of(trigger.get_next_fire_time(None, now - timedelta(seconds=5)))
    derived = [
        trigger.get_next_fire_time(run, now),
        run + timedelta(seconds=1),
        run.astimezone(BERLIN),
        run.replace(microsecond=0),
    ]
    assert [type(value) for value in derived] == [datetime] * 4
    state = pickle.dumps({"next_run_time": derived[0], "run": run})
    assert JobUnpickler(io.BytesIO(state)).load() == {"next_run_time": derived[0], "run": run.plain()}


# -- the policies in a real engine ------------------------------------------------------


def overdue_interval(job_id, sent_ago, fires, **options):
    """An interval job of 1 s accepted *sent_ago* seconds ago whose schedule
    has *fires* fire times, all in the past: the daemon reads it only now."""
    sent = datetime.now(UTC) - timedelta(seconds=sent_ago)
    spec = trigger_spec("interval", UTC, end_date=sent + timedelta(seconds=fires), seconds=1)
    return JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func="test_engine:record",
        args=[job_id],
        trigger=spec,
        sent_at=sent.isoformat(),
        options=options,
    )


def test_catch_up_policies_in_the_engine(engine_factory):  # noqa: F811 - the fixture
    """Twelve fire times, all overdue by minutes (past the grace of 60 s):
    skip runs none, once runs one, all runs each; every other fire time is a
    JOB_MISSED and a 'missed' runs row -- none vanishes."""
    engine, events = engine_factory(misfire_grace_time=60, catch_up_limit=5)
    for policy in ("skip", "once", "all"):
        engine.submit(overdue_interval(policy, sent_ago=600, fires=12, catch_up=policy))
    wait_for(lambda: all(Event.JOB_REMOVED in types_for(events, p) for p in ("skip", "once", "all")))
    ran = {p: sum(1 for tag, _ in RUNS if tag == p) for p in ("skip", "once", "all")}
    assert ran == {"skip": 0, "once": 1, "all": 6}  # all: catch_up_limit one by one, then the latest
    for policy, runs in ran.items():
        missed = [e for e in events if e.get("job_id") == policy and e.type == Event.JOB_MISSED]
        rows = engine.ledger.list_runs(policy, None, 100)
        # Every fire time is accounted for: run, missed one by one, or in a counted span.
        accounted = runs + sum(e.get("missed_count") or 1 for e in missed)
        assert accounted == 12, (policy, [e.reason for e in missed])
        assert len(rows) == runs + len(missed)
        assert all(e.scheduled_run_time and e.reason and e.run_key for e in missed)
    span = [e for e in events if e.get("job_id") == "all" and e.type == Event.JOB_MISSED]
    assert len(span) == 1 and span[0].missed_count == 6 and "catch_up_limit (5)" in span[0].reason
    assert engine.ledger.get_job("skip")["status"] == "missed"
    assert engine.ledger.get_job("all")["status"] == "done"


def test_catch_up_default_comes_from_the_settings(engine_factory):  # noqa: F811 - the fixture
    engine, events = engine_factory(misfire_grace_time=60, catch_up="once")
    engine.submit(overdue_interval("default-once", sent_ago=600, fires=3))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "default-once"))
    assert types_for(events, "default-once") == [
        Event.JOB_CREATED,
        Event.JOB_MISSED,
        Event.JOB_MISSED,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]
    # A job that sets its own grace keeps the policy that uses it (skip).
    engine.submit(overdue_interval("own-grace", sent_ago=600, fires=3, misfire_grace_time=30))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "own-grace"))
    assert types_for(events, "own-grace") == [Event.JOB_CREATED, *[Event.JOB_MISSED] * 3, Event.JOB_REMOVED]


def test_catch_up_with_the_memory_job_store(engine_factory):  # noqa: F811 - the fixture
    engine, events = engine_factory(misfire_grace_time=60, **{"jobstore.url": "memory"})
    engine.submit(overdue_interval("memory-once", sent_ago=600, fires=3, catch_up="once"))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "memory-once"))
    assert types_for(events, "memory-once") == [
        Event.JOB_CREATED,
        Event.JOB_MISSED,
        Event.JOB_MISSED,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]


# -- refused early, with the name --------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("catch_up", "later", "scheduler.catch_up = 'later': expected 'skip'"),
        ("catch_up_limit", "0", "scheduler.catch_up_limit = '0': expected a whole number of at least 1"),
        ("catch_up_limit", "many", "scheduler.catch_up_limit = 'many': expected a whole number"),
    ],
)
def test_bad_catch_up_settings_are_refused_with_their_name(key, value, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_settings({f"scheduler.{key}": value})


def test_catch_up_settings():
    settings = parse_settings({"scheduler.catch_up": " ALL ", "scheduler.catch_up_limit": "7"})
    assert (settings.catch_up, settings.catch_up_limit) == ("all", 7)
    assert (parse_settings({}).catch_up, parse_settings({}).catch_up_limit) == ("skip", 100)
