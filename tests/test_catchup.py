"""Catch-up of overdue runs (:mod:`pyramid_scheduler.daemon.catchup`): the planner the
daemon's jobs use, on the triggers the daemon builds from wire specs; the
policies through a real engine; and their checks at add time, at the door and
in the settings.

The system clock cannot be changed in a test, so a clock jump is a job whose
next run time is far in the past, and DST is the daemon's own loop (plan the
due runs, then move the job as APScheduler's ``_process_jobs`` does) driven by
a simulated clock across both changes of a year.
"""

from __future__ import annotations

import io
import pickle
import time
import tracemalloc
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pyramid.config import Configurator
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
from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.store.unpickle import JobUnpickler
from pyramid_scheduler.wire.messages import JobRequest, build_trigger, decode, trigger_spec

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


def run_daemon_loop(trigger, start, end, step, coalesce=True):
    """The daemon's loop on a simulated clock: each tick, plan the due runs
    (CatchUpJob._get_run_times), then store the next run time as
    APScheduler's _process_jobs does. Returns every planned run time."""
    fired = []
    next_run = trigger.get_next_fire_time(None, start)
    clock = start
    while clock < end:
        if next_run is not None and next_run.astimezone(UTC) <= clock.astimezone(UTC):
            runs = plan_run_times(trigger, next_run, clock, coalesce)
            assert runs, f"due at {next_run} but nothing planned at {clock}"
            assert not [m for run in runs for m in run.skipped], "a run was skipped on a ticking clock"
            assert not fired or runs[0].astimezone(UTC) > fired[-1].astimezone(UTC), (runs, fired[-1])
            fired.extend(run.plain() for run in runs)
            following = trigger.get_next_fire_time(runs[-1], clock)
            assert following is None or following.astimezone(UTC) > clock.astimezone(UTC), (
                f"spins at {clock}: next {following}"
            )
            next_run = following
        clock = (clock.astimezone(UTC) + step).astimezone(BERLIN)  # real time, not wall time
    return fired


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)], ids=["spring", "autumn"])
@pytest.mark.parametrize("hour,minute", [(2, 30), (1, 30), (3, 0), (0, 0)])
def test_a_daily_cron_fires_once_a_day_across_dst_changes(day, hour, minute):
    """Europe/Berlin: 02:00 -> 03:00 on 2026-03-29 (02:30 does not exist),
    03:00 -> 02:00 on 2026-10-25 (02:30 happens twice). A daily cron job
    fires exactly once on each day around the change, never twice, never
    spinning, whatever its time of day."""
    spec = {"type": "cron", "timezone": "Europe/Berlin", "hour": hour, "minute": minute}
    trigger = build_trigger(spec, UTC)
    start = datetime.combine(day - timedelta(days=2), datetime.min.time(), BERLIN)
    end = datetime.combine(day + timedelta(days=3), datetime.min.time(), BERLIN)
    fired = run_daemon_loop(trigger, start, end, timedelta(minutes=1))
    days = [when.astimezone(BERLIN).date() for when in fired]
    assert days == [day + timedelta(days=d) for d in range(-2, 3)], fired
    assert len({when.astimezone(UTC) for when in fired}) == len(fired)
    for when in fired:
        local = when.astimezone(BERLIN)
        if (local.hour, local.minute) != (hour, minute):
            # Only the missing 02:30 of the spring change may move, and only forward.
            assert day.month == 3 and local.date() == day and (hour, minute) == (2, 30), local
            assert local.hour == 3


@pytest.mark.parametrize("day", [date(2026, 3, 29), date(2026, 10, 25)], ids=["spring", "autumn"])
@pytest.mark.parametrize("minute,every", [("15", timedelta(hours=1)), ("*/10", timedelta(minutes=10))])
def test_hourly_and_minutely_crons_never_repeat_or_spin_across_dst_changes(day, minute, every):
    """Every fire time comes after the one before, at its minute; the only
    gaps are the repeated wall-clock hour of autumn (fired once)."""
    trigger = build_trigger({"type": "cron", "timezone": "Europe/Berlin", "minute": minute}, UTC)
    start = datetime.combine(day, datetime.min.time(), BERLIN) - timedelta(hours=3)
    end = start + timedelta(hours=9)
    fired = run_daemon_loop(trigger, start, end, timedelta(seconds=30))
    utc = [when.astimezone(UTC) for when in fired]
    assert utc == sorted(set(utc))
    assert all(str(when.astimezone(BERLIN).minute) == minute or when.minute % 10 == 0 for when in fired)
    gaps = {b - a for a, b in zip(utc, utc[1:], strict=False)}
    assert gaps <= {every, every + timedelta(hours=1)}, sorted(gaps)
    if day.month == 3:
        assert gaps == {every}  # the hour that does not exist has no fire time to skip
    wall = [when.astimezone(BERLIN).replace(tzinfo=None) for when in fired]
    assert len(wall) == len(set(wall))  # once per wall-clock time


@pytest.mark.parametrize("minute", ["*", "*/10", "15"])
def test_a_cron_started_during_the_repeated_hour_never_fires_in_the_past(minute):
    """A daemon (re)started while the clocks show the repeated hour the
    second time (CET): the first fire time is never before now, and the
    loop goes on without repeats."""
    trigger = build_trigger({"type": "cron", "timezone": "Europe/Berlin", "minute": minute}, UTC)
    instant = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST; 01:00 UTC is 02:00 CET
    while instant < datetime(2026, 10, 25, 2, 30, tzinfo=UTC):
        fire = trigger.get_next_fire_time(None, instant.astimezone(BERLIN))
        assert fire.astimezone(UTC) >= instant, (instant.astimezone(BERLIN), fire)
        instant += timedelta(minutes=7, seconds=13)
    start = datetime(2026, 10, 25, 1, 20, tzinfo=UTC).astimezone(BERLIN)  # 02:20 CET, fold=1
    fired = run_daemon_loop(trigger, start, start + timedelta(hours=2), timedelta(seconds=30))
    assert fired and all(when.astimezone(UTC) >= start.astimezone(UTC) for when in fired)


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


@pytest.fixture
def proxy(tmp_path):
    from conftest import make_settings

    with Configurator(settings=make_settings(tmp_path)) as config:
        config.include("pyramid_scheduler")
    yield config.registry.scheduler
    config.registry.scheduler.close()


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda p: p.add_interval_job(record, args=["x"], seconds=5, catch_up="sometimes"),
            "catch_up: expected one of",
        ),
        (lambda p: p.add_interval_job(record, args=["x"], seconds=5, catch_up=True), "catch_up: expected str"),
        (
            lambda p: p.add_date_job(record, args=["x"], date=time.time() + 60, catch_up="once"),
            "catch_up: not an option of date",
        ),
        (lambda p: p.add_async_job(record, args=["x"], catch_up="all"), "catch_up: not an option of now"),
        (
            lambda p: p.add_cron_job(record, args=["x"], minute=5, catch_up="all", misfire_grace_time=30),
            "misfire_grace_time: has no effect with catch_up='all'",
        ),
        (
            lambda p: p.add_cron_job(record, args=["x"], minute=5, catch_up="once", coalesce=False),
            "coalesce: has no effect with catch_up='once'",
        ),
    ],
)
def test_bad_catch_up_is_refused_at_add_time(proxy, call, message):
    with pytest.raises(InvalidJob, match=message):
        call(proxy)


def test_catch_up_travels_on_the_wire(proxy):
    with proxy.capturing() as sent:
        proxy.add_cron_job(record, args=["x"], minute=5, catch_up="all")
    assert sent[0].options == {"catch_up": "all"}
    assert decode(sent[0].to_wire()).options == {"catch_up": "all"}


def test_bad_catch_up_is_refused_at_the_door():
    request = overdue_interval("x", 10, 3).to_wire()
    for options, message in (
        ({"catch_up": "never"}, "catch_up: expected one of"),
        ({"catch_up": 1}, "option 'catch_up' has type int"),
    ):
        with pytest.raises(InvalidMessage, match=message):
            decode({**request, "options": options})
    date_request = {**request, "trigger": trigger_spec("date", UTC, run_date=datetime.now(UTC))}
    with pytest.raises(InvalidMessage, match="not an option of date jobs"):
        decode({**date_request, "options": {"catch_up": "once"}})


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
