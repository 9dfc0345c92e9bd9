"""Retries, ``wait`` and ``ttl``, in-process: the engine on a real job store
(SQLite file or PostgreSQL), requests handed to it as the consumer would."""

import concurrent.futures
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import test_engine
from pyramid.config import Configurator
from test_engine import RUNS, add, fail, record, types_for, wait_for

from conftest import jobstore_url, make_settings, unique
from pyramid_scheduler.api import PYRAMID_EVENTS, Event, JobRetry
from pyramid_scheduler.daemon.aps import set_pool
from pyramid_scheduler.daemon.execution import run_key
from pyramid_scheduler.daemon.retries import retry_delay
from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage, JobTimeout
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunStart
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest, decode

UTC = timezone.utc
#: For tests whose logic is the same on every job store (the ledger's SQL is
#: exercised on PostgreSQL by the others), to keep the suite short.
SQLITE_ONLY = pytest.mark.parametrize("store_kind", ["sqlite"])
# The engine tests' fixtures: a real job store, engines stopped after the test.
engine_factory = test_engine.engine_factory
proxy_factory = test_engine.proxy_factory
#: How many times each tag of flaky() fails before it succeeds.
FAILURES: dict[str, int] = {}


def flaky(tag):
    RUNS.append((tag, time.time()))
    if FAILURES.get(tag, 0) > 0:
        FAILURES[tag] -= 1
        raise RuntimeError(f"{tag}: failing on purpose, {FAILURES[tag]} more to come")
    return tag


def retrying(func, job_id, kind="now", when=None, **options):
    request = add(func, kind=kind, when=when, job_id=job_id)
    return JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func=f"{func.__module__}:{func.__name__}",
        args=request.args,
        trigger=request.trigger,
        options=options,
    )


def runs_of(tag):
    return [at for name, at in RUNS if name == tag]


def test_failed_run_is_retried_with_backoff_until_it_succeeds(engine_factory):
    engine, events = engine_factory()
    FAILURES["r1"] = 2
    engine.submit(retrying(flaky, "r1", retries=3, retry_delay=0.2, retry_backoff=2.0))
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "r1"))
    assert types_for(events, "r1") == [
        Event.JOB_CREATED,
        Event.JOB_ERROR,
        Event.JOB_RETRY,
        Event.JOB_ERROR,
        Event.JOB_RETRY,
        Event.JOB_EXECUTED,
        Event.JOB_REMOVED,
    ]
    errors = [e for e in events if e.type == Event.JOB_ERROR]
    assert [(e.attempt, e.will_retry) for e in errors] == [(1, True), (2, True)]
    retries = [e for e in events if e.type == Event.JOB_RETRY]
    assert [(e.attempt, e.delay) for e in retries] == [(2, 0.2), (3, 0.4)]
    # Each retry is a run of its own: its own run key, at its retry time.
    keys = [e.run_key for e in events if e.type in (Event.JOB_ERROR, Event.JOB_EXECUTED)]
    assert len(set(keys)) == 3
    assert [e.scheduled_run_time for e in retries] == [e.scheduled_run_time for e in errors]
    starts = runs_of("r1")
    assert len(starts) == 3
    # A retry never starts before its delay has passed since the failure.
    assert starts[1] - starts[0] >= 0.2 and starts[2] - starts[1] >= 0.4
    job = engine.proxy.get_job("r1")
    assert (job["status"], job["runs"], job["attempt"], job["retries"], job["retries_left"]) == ("done", 3, 3, 3, 1)
    assert job["retry_at"] is None
    assert [run["status"] for run in engine.proxy.get_runs("r1")] == ["failed", "failed", "done"]
    assert PYRAMID_EVENTS[Event.JOB_RETRY] is JobRetry


def test_the_last_failure_fails_the_job_after_one_plus_retries_runs(engine_factory):
    engine, events = engine_factory()
    engine.submit(retrying(fail, "r2", retries=2, retry_delay=0.05))
    record_ = engine.proxy.wait("r2", timeout=20)
    assert record_["status"] == "failed" and record_["runs"] == 3 and record_["retries_left"] == 0
    assert "failing on purpose" in record_["error"]
    assert len(runs_of("r2")) == 3
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "r2"))
    errors = [e for e in events if e.type == Event.JOB_ERROR]
    assert [(e.attempt, e.will_retry) for e in errors] == [(1, True), (2, True), (3, False)]
    assert types_for(events, "r2").count(Event.JOB_RETRY) == 2
    assert types_for(events, "r2")[-1] == Event.JOB_REMOVED


@SQLITE_ONLY
def test_a_job_without_retries_fails_once(engine_factory):
    engine, events = engine_factory()
    engine.submit(retrying(fail, "r0"))
    assert engine.proxy.wait("r0", timeout=20)["runs"] == 1
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "r0"))
    error = [e for e in events if e.type == Event.JOB_ERROR][0]
    assert (error.attempt, error.will_retry) == (1, False)


@SQLITE_ONLY
def test_a_pending_retry_survives_a_restart(engine_factory, proxy_factory):
    proxy = proxy_factory()
    first, events = engine_factory(proxy=proxy)
    FAILURES["r3"] = 1
    first.submit(retrying(flaky, "r3", retries=1, retry_delay=60))
    wait_for(lambda: Event.JOB_RETRY in types_for(events, "r3"))
    wait_for(lambda: first.aps.get_job("r3", jobstore="jobs") is not None)  # the retry is stored
    first.stop(timeout=1)
    retry_at = proxy.get_job("r3")["retry_at"]

    second, events = engine_factory(proxy=proxy)
    stored = second.aps.get_job("r3", jobstore="jobs")
    assert stored.next_run_time.timestamp() == pytest.approx(retry_at)
    assert len(runs_of("r3")) == 1
    # Bring the retry forward rather than wait a minute.
    second.aps.modify_job("r3", jobstore="jobs", next_run_time=datetime.now(UTC))
    record_ = proxy.wait("r3", timeout=20)
    assert (record_["status"], record_["runs"], record_["attempt"]) == ("done", 2, 2)
    assert len(runs_of("r3")) == 2


class DoneBeforeReturning(concurrent.futures.ThreadPoolExecutor):
    """A real thread pool whose ``submit`` returns once the work is done: the
    caller then adds its done-callback to a finished future, and
    ``concurrent.futures`` runs the callback at once, on the caller's thread
    (what a loaded machine does when the submitting thread is descheduled)."""

    def submit(self, *args, **kwargs):
        future = super().submit(*args, **kwargs)
        concurrent.futures.wait([future])
        return future


def test_a_retry_stored_by_a_run_that_ended_before_its_submission_returned_is_kept(engine_factory):
    engine, events = engine_factory()
    set_pool(engine.executor, DoneBeforeReturning(max_workers=2))
    job_id = "r6"
    FAILURES[job_id] = 1
    engine.submit(
        retrying(flaky, job_id, kind="date", when=datetime.now(UTC) + timedelta(seconds=0.3), retries=1, retry_delay=60)
    )
    wait_for(lambda: Event.JOB_RETRY in types_for(events, job_id))
    retry_at = next(e.retry_at for e in events if e.type == Event.JOB_RETRY)
    # Past the scheduler thread's write of the rows of the jobs it handed over.
    wait_for(lambda: engine.stores["jobs"].pending() == 0)
    job = engine.aps.get_job(job_id, jobstore="jobs")
    assert job is not None and job.next_run_time == retry_at
    record_ = engine.ledger.get_job(job_id)
    assert (record_["status"], record_["attempt"]) == ("scheduled", 2)


@SQLITE_ONLY
def test_a_retry_recorded_but_not_stored_is_scheduled_at_start(engine_factory, proxy_factory):
    """The daemon stopped after recording the failure and before storing the
    retry in APScheduler: the next one schedules it from the ledger."""
    proxy = proxy_factory()
    first, events = engine_factory(proxy=proxy)
    FAILURES["r4"] = 1
    first.submit(retrying(flaky, "r4", kind="date", when=datetime.now(UTC), retries=1, retry_delay=60))
    wait_for(lambda: first.aps.get_job("r4", jobstore="jobs") is not None and runs_of("r4"))
    first.aps.pause()
    first.aps.remove_job("r4", jobstore="jobs")
    first.stop(timeout=1)
    row = first.ledger.get_job("r4")
    assert row["status"] == "scheduled" and row["retry_at"] > time.time() + 30
    # Move the retry's due time to half a second from now rather than wait a minute.
    due = time.time() + 0.5
    with first.ledger.engine.begin() as conn:
        conn.execute(first.ledger.jobs.update().where(first.ledger.jobs.c.id == "r4").values(retry_at=due))

    second, events = engine_factory(proxy=proxy)
    record_ = proxy.wait("r4", timeout=20)
    assert (record_["status"], record_["runs"]) == ("done", 2)
    starts = runs_of("r4")
    assert starts[1] >= due
    keys = [run["run_key"] for run in proxy.get_runs("r4")]
    assert keys[1] == "r4@" + datetime.fromtimestamp(due, UTC).isoformat()


@SQLITE_ONLY
def test_cancel_while_a_retry_waits(engine_factory):
    engine, events = engine_factory()
    engine.submit(retrying(fail, "r5", retries=3, retry_delay=60))
    wait_for(lambda: Event.JOB_RETRY in types_for(events, "r5"))
    wait_for(lambda: engine.aps.get_job("r5", jobstore="jobs") is not None)
    assert engine.submit(JobRequest(op="cancel", id="r5", queue="jobs")) == "canceled"
    assert engine.aps.get_job("r5", jobstore="jobs") is None
    record_ = engine.proxy.wait("r5", timeout=5)
    assert record_["status"] == "canceled" and record_["runs"] == 1
    wait_for(lambda: Event.JOB_CANCELED in types_for(events, "r5"))
    assert types_for(events, "r5") == [Event.JOB_CREATED, Event.JOB_ERROR, Event.JOB_RETRY, Event.JOB_CANCELED]


def test_retry_delay_grows_and_is_capped():
    options = {"retry_delay": 2, "retry_backoff": 3, "retry_max_delay": 100}
    assert [retry_delay(options, n) for n in (1, 2, 3, 4, 5)] == [2, 6, 18, 54, 100]
    assert retry_delay({}, 1) == 1.0 and retry_delay({}, 2) == 2.0
    assert retry_delay({}, 100_000) == 3600.0  # no overflow
    assert retry_delay({"retry_backoff": 1, "retry_delay": 5}, 50) == 5


# Checks in the calling process: one job store is enough.
@pytest.mark.parametrize("store_kind", ["sqlite"])
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"retries": -1}, "retries: expected a number of 0 or more"),
        ({"retries": True}, "retries: expected int"),
        ({"retries": 1.5}, "retries: expected int"),
        ({"retry_delay": -0.1}, "retry_delay: expected a number of 0 or more"),
        ({"retry_delay": float("nan")}, "retry_delay: expected a number of 0 or more"),
        ({"retry_delay": 10**9}, "retry_delay: at most"),
        ({"retry_backoff": 0.5}, "retry_backoff: expected a number of 1 or more"),
        ({"retry_max_delay": float("inf")}, "retry_max_delay: expected a number of 0 or more"),
        ({"retry_max_delay": None}, "retry_max_delay: expected int or float"),
        ({"ttl": -5}, "ttl: expected a number of 0 or more"),
        ({"ttl": "1d"}, "ttl: expected int or float or None"),
        ({"retrys": 3}, "retrys: unknown option"),
    ],
)
def test_bad_retry_and_ttl_options_are_refused_at_add_time(proxy_factory, options, fragment):
    proxy = proxy_factory()
    with pytest.raises(InvalidJob) as info:
        proxy.add_async_job(record, args=["x"], **options)
    assert fragment in str(info.value)


@pytest.mark.parametrize("store_kind", ["sqlite"])
@pytest.mark.parametrize("kind", ["interval", "cron"])
def test_retries_are_refused_for_recurring_jobs(proxy_factory, kind):
    proxy = proxy_factory()
    add_job = proxy.add_interval_job if kind == "interval" else proxy.add_cron_job
    fields = {"minutes": 5} if kind == "interval" else {"minute": "*/5"}
    with pytest.raises(InvalidJob, match=f"retries: only one-off jobs .* not {kind} jobs"):
        add_job(record, args=["x"], retries=2, **fields)


def test_the_daemon_refuses_what_the_proxy_refuses():
    body = add(record, job_id="x").to_wire()
    for options, fragment in [
        ({"retries": -1}, "retries"),
        ({"retry_backoff": 0}, "retry_backoff"),
        ({"retries": 2, "ttl": 1}, None),
    ]:
        message = json.dumps({**body, "options": options})
        if fragment is None:
            assert decode(message).options == options
        else:
            with pytest.raises(InvalidMessage, match=fragment):
                decode(message)
    interval = {
        **body,
        "trigger": trigger_spec("interval", UTC, start_date=datetime.now(UTC), minutes=1),
        "options": {"retries": 1},
    }
    with pytest.raises(InvalidMessage, match="only one-off jobs"):
        decode(json.dumps(interval))


@SQLITE_ONLY
def test_wait_raises_a_timeout_naming_the_job(engine_factory):
    engine, _ = engine_factory()
    proxy = engine.proxy
    with pytest.raises(JobTimeout, match="job nobody did not finish within 0.2s \\(no record yet\\)") as info:
        proxy.wait("nobody", timeout=0.2)
    assert isinstance(info.value, TimeoutError) and info.value.record is None
    engine.submit(add(record, kind="date", when=datetime.now(UTC) + timedelta(hours=1), job_id="w1"))
    with pytest.raises(JobTimeout, match="job w1 .*status 'scheduled'") as info:
        proxy.wait("w1", timeout=0.3)
    assert info.value.job_id == "w1" and info.value.record["status"] == "scheduled"
    engine.submit(add(record, job_id="w2"))
    assert proxy.wait("w2", timeout=20)["result"] == {"tag": "w2"}
    with pytest.raises(InvalidJob, match="timeout"):
        proxy.wait("w2", timeout=-1)


def test_ttl_keeps_or_drops_a_finished_record(engine_factory):
    engine, _ = engine_factory()
    engine.submit(retrying(record, "short", ttl=0))
    engine.submit(retrying(record, "long", ttl=30 * 86400))
    engine.submit(retrying(record, "default"))
    for job_id in ("short", "long", "default"):
        engine.proxy.wait(job_id, timeout=20)
    assert engine.proxy.get_job("long")["ttl"] == 30 * 86400
    stamp = time.time() + 1
    # Housekeeping an hour later with the default result_ttl of 7 days: only
    # the job whose ttl is 0 has gone.
    assert engine.ledger.purge(stamp + 3600 - 7 * 86400, at=stamp + 3600) == 1
    assert engine.proxy.get_job("short") is None
    assert engine.proxy.get_runs("short") == []
    assert engine.proxy.get_job("default") is not None
    # Eight days later the default one goes; the 30-day one stays, with its runs.
    assert engine.ledger.purge(stamp + 8 * 86400 - 7 * 86400, at=stamp + 8 * 86400) == 1
    assert engine.proxy.get_job("long") is not None
    assert len(engine.proxy.get_runs("long")) == 1
    assert engine.ledger.purge(stamp + 31 * 86400 - 7 * 86400, at=stamp + 31 * 86400) == 1
    assert engine.proxy.get_job("long") is None


@SQLITE_ONLY
def test_runs_of_a_canceled_job_are_not_started(engine_factory):
    engine, _ = engine_factory()
    engine.submit(add(record, kind="date", when=datetime.now(UTC) + timedelta(hours=1), job_id="c9"))
    engine.submit(JobRequest(op="cancel", id="c9", queue="jobs"))
    assert engine.ledger.start_run(RunStart("c9", "jobs", "c9@x", time.time(), "me")) == "canceled"
    with engine.db.connect() as conn:
        assert conn.execute(sa.select(engine.ledger.runs).where(engine.ledger.runs.c.job_id == "c9")).all() == []


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
def test_a_jobs_table_from_an_earlier_version_gains_the_new_columns(store_kind, tmp_var, drop_tables):
    url, prefix = jobstore_url(store_kind, tmp_var), f"{unique()}_"
    drop_tables.append((url, prefix))
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:  # the jobs table as 1.0.0.dev made it, with a row
            conn.execute(
                sa.text(
                    f"create table {prefix}jobs (id varchar(200) primary key, queue varchar(200) not null, "
                    "func varchar(500) not null, kind varchar(20) not null, status varchar(20) not null, "
                    "mid varchar(64) not null, request text not null, created_at float not null, "
                    "updated_at float not null, runs integer not null, last_run_at float, result text, "
                    "error text)"
                )
            )
            conn.execute(
                sa.text(
                    f"insert into {prefix}jobs values ('old', 'jobs', 'm:f', 'now', 'done', 'm', '{{}}', 1, 1, 1, "
                    "null, null, null)"
                )
            )
        ledger = Ledger(engine, prefix)
        row = ledger.get_job("old")
        assert (row["attempt"], row["retry_at"], row["ttl"]) == (1, None, None)
        assert ledger.purge(older_than=2) == 1
    finally:
        engine.dispose()


def test_retries_need_the_sql_job_store(tmp_var):
    settings = make_settings(tmp_var, **{"jobstore.url": "memory"})
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    try:
        with pytest.raises(InvalidJob, match="retries: need the SQL job store"):
            proxy.add_async_job(record, args=["x"], retries=1)
    finally:
        proxy.close()


def test_a_run_cut_by_a_crash_spends_a_retry(engine_factory, proxy_factory):
    proxy = proxy_factory()
    crashed, _ = engine_factory(proxy=proxy)
    when = datetime.now(UTC) + timedelta(seconds=1)
    crashed.submit(retrying(record, "i2", kind="date", when=when, retries=2, retry_delay=0.2))
    # What a crash mid-run leaves: APScheduler already removed the date job,
    # the ledger has the run "started" by the dead daemon.
    crashed.aps.pause()
    crashed.aps.remove_job("i2", jobstore="jobs")
    assert (
        crashed.ledger.start_run(RunStart("i2", "jobs", run_key("i2", when), when.timestamp(), crashed.owner))
        == "start"
    )
    crashed.stop(timeout=1)

    engine, events = engine_factory(proxy=proxy)
    record_ = proxy.wait("i2", timeout=20)
    assert (record_["status"], record_["runs"], record_["attempt"], record_["retries_left"]) == ("done", 1, 2, 1)
    assert [run["status"] for run in proxy.get_runs("i2")] == ["interrupted", "done"]
    wait_for(lambda: Event.JOB_REMOVED in types_for(events, "i2"))
    assert types_for(events, "i2") == [Event.JOB_INTERRUPTED, Event.JOB_RETRY, Event.JOB_EXECUTED, Event.JOB_REMOVED]
    interrupted = [e for e in events if e.type == Event.JOB_INTERRUPTED][0]
    assert interrupted.will_retry and "retrying it in 0.2s (attempt 2 of 3)" in interrupted.reason
    assert [tag for tag, _ in RUNS] == ["i2"]
