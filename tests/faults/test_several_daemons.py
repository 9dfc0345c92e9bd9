"""Several daemons on one queue, and faults: ``kill -9`` of two of three under
mixed load, a daemon cut off from the job store (a network partition), and
PostgreSQL restarted under three daemons.

Oracle: the ids that ``add_*_job`` returned (kept by the test), the runs the
job functions wrote to their own SQLite file, and the job and run records.
Once everything has settled: lost = 0 (every accepted job has a final
record), duplicate runs = 0 (no run key of any job ran twice: one-off jobs
once, each fire of a recurring job once), and no run left ``started`` (every
run a killed daemon cut is reported).

``FAULT_JOBS`` (default 300) scales the load.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator
from tcpproxy import TCPProxy

from conftest import POSTGRES_URL, make_settings
from daemons import Daemon, wait_until, write_ini
from integration.sampleapp import failing, jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

JOBS = int(os.environ.get("FAULT_JOBS", "300"))
FINAL = {"done", "failed", "missed", "canceled", "interrupted", "parked"}


def scheduler_for(settings: dict[str, str]) -> Any:
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    config.commit()
    return config.registry.scheduler


def produce(
    scheduler: Any, oracle: str, rng: random.Random, accepted: dict[str, str], count: int, prefix: str = ""
) -> None:
    """Mixed load: run-now, date, interval, cron and retried jobs."""
    for n in range(count):
        kind = rng.choices(["now", "date", "interval", "cron", "retry"], [5, 3, 1, 1, 1])[0]
        tag = f"{prefix}{kind}-{n}"
        now = datetime.now(timezone.utc)
        end = now + timedelta(seconds=3.5)
        if kind == "now":
            scheduler.add_async_job(jobs.record, args=[oracle, tag], id=tag)
        elif kind == "date":
            scheduler.add_date_job(jobs.record, now + timedelta(seconds=rng.uniform(0, 4)), args=[oracle, tag], id=tag)
        elif kind == "interval":
            scheduler.add_interval_job(jobs.record, args=[oracle, tag], id=tag, seconds=1, end_date=end)
        elif kind == "cron":
            scheduler.add_cron_job(jobs.record, args=[oracle, tag], id=tag, second="*", end_date=end)
        else:  # fails once, then succeeds on its retry
            scheduler.add_async_job(failing.flaky, args=[oracle, tag, 1], id=tag, retries=2, retry_delay=0.5)
        accepted[tag] = kind
        time.sleep(0.01)


def books(scheduler: Any, oracle: str, accepted: dict[str, str]) -> dict[str, Any]:
    """What the records and the oracle say, once settled."""
    records = {job["id"]: job for job in scheduler.get_jobs(limit=len(accepted) * 2)}
    ran = collections.Counter(run["tag"] for run in jobs.runs(oracle))
    ledger = scheduler._ledger()
    with ledger.engine.connect() as conn:
        runs = conn.execute(sa.select(ledger.runs.c.run_key, ledger.runs.c.job_id, ledger.runs.c.status)).all()
    one_off = [tag for tag, kind in accepted.items() if kind in ("now", "date")]
    return {
        "records": records,
        "statuses": collections.Counter(records[tag]["status"] for tag in accepted if tag in records),
        "lost": [tag for tag in accepted if tag not in records or records[tag]["status"] not in FINAL],
        "duplicates": [tag for tag in one_off if ran[tag] > 1],
        "unrun_done": [tag for tag in one_off if tag in records and records[tag]["status"] == "done" and ran[tag] != 1],
        # A recurring job runs at most once per fire: no more calls than fire times recorded done.
        "over_run": [
            tag
            for tag, kind in accepted.items()
            if kind in ("interval", "cron")
            and ran[tag] > sum(1 for run in runs if run.job_id == tag and run.status in ("done", "interrupted"))
        ],
        "left_started": [run.run_key for run in runs if run.status == "started"],
        "runs": sum(ran.values()),
    }


@pytest.mark.parametrize(
    ("broker", "store"),
    [
        ("sqlite", "sqlite"),
        ("redis", "postgresql"),
        ("rabbitmq", "postgresql"),
    ],
)
def test_kill_9_of_two_of_three_daemons_under_mixed_load(
    tmp_path: Path, drop_tables: Any, broker: str, store: str
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    oracle = str(tmp_path / "oracle.sqlite")
    settings = make_settings(var, broker, store, **{"executor.max_workers": "4"})
    settings["sampleapp.oracle"] = oracle
    drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
    ini = write_ini(tmp_path / "daemon.ini", settings)
    scheduler = scheduler_for(settings)
    assert scheduler.get_job("no-such-job") is None  # the tables, before three daemons race to make them
    rng = random.Random(JOBS)
    accepted: dict[str, str] = {}
    daemons = [Daemon.start(ini) for _ in range(3)]
    started = time.monotonic()
    try:
        producer = threading.Thread(target=produce, args=(scheduler, oracle, rng, accepted, JOBS))
        producer.start()
        survivor, *doomed = daemons
        for daemon in doomed:
            time.sleep(rng.uniform(1.0, 2.0))
            daemon.kill()
        producer.join()

        unsettled: dict[str, str] = {}

        def settled() -> bool:
            found = books(scheduler, oracle, accepted)
            unsettled.clear()
            unsettled.update({tag: found["records"].get(tag, {}).get("status", "no record") for tag in found["lost"]})
            return not unsettled and not found["left_started"]

        try:
            wait_until(settled, "every accepted job to reach a final state", 150, alive=(survivor,), interval=0.5)
        except BaseException:
            print(f"unsettled: {collections.Counter(unsettled.values())} e.g. {list(unsettled.items())[:10]}")
            for daemon in daemons:
                print(f"===== pscheduler pid {daemon.pid} exit {daemon.proc.returncode}\n{daemon.log()[-5000:]}")
            raise
        time.sleep(1)  # a duplicate run, if any, would land now
        found = books(scheduler, oracle, accepted)
        print(
            f"\n[{broker}+{store}] accepted={len(accepted)} killed=2 of 3 statuses={dict(found['statuses'])} "
            f"runs={found['runs']} lost={len(found['lost'])} duplicate_runs={len(found['duplicates'])} "
            f"elapsed={time.monotonic() - started:.1f}s"
        )
        assert found["lost"] == []
        assert found["duplicates"] == []
        assert found["unrun_done"] == []
        assert found["over_run"] == []
        assert found["left_started"] == []
        assert found["statuses"]["done"] >= len(accepted) * 0.8, found["statuses"]
        assert survivor.terminate() == 0, survivor.log()
    finally:
        for daemon in daemons:
            daemon.close()
        scheduler.shutdown()


@pytest.fixture
def pg_proxy():
    target = urlsplit(POSTGRES_URL)
    proxy = TCPProxy((target.hostname or "127.0.0.1", target.port or 5432))
    yield proxy
    proxy.close()


def through(proxy: TCPProxy) -> str:
    """The PostgreSQL URL of the tests, through *proxy*."""
    parts = urlsplit(POSTGRES_URL)
    return parts._replace(
        netloc=parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    ).geturl()


def test_a_daemon_cut_off_from_the_job_store_is_taken_over_and_runs_nothing_twice(
    make_harness: Any, drop_tables: Any, pg_proxy: TCPProxy
) -> None:
    """A network partition between one daemon and the database: the other
    daemon declares it dead and runs the jobs it held; when the partition
    heals, the cut-off daemon finds itself declared dead and exits 3, without
    having started a run meanwhile or after."""
    harness = make_harness(broker="redis", store="postgresql")
    _, prefix = drop_tables[-1]
    proxy = harness.proxy()
    assert proxy.get_job("no-such-job") is None
    partitioned = harness.app_settings(**{"scheduler.jobstore.url": through(pg_proxy)})
    cut_off = harness.start(ini=harness.write_ini(partitioned))
    harness.wait_active(proxy, cut_off)
    # Jobs it stores, so holds: the broker gives every message to the only daemon.
    run_date = datetime.now(timezone.utc) + timedelta(seconds=8)
    held = [f"held-{uuid.uuid4().hex[:6]}-{n}" for n in range(5)]
    for job_id in held:
        proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, job_id], id=job_id)
    for job_id in held:
        harness.wait_job(proxy, job_id, {"scheduled"}, alive=(cut_off,))
    other = harness.start()
    harness.wait_active(proxy, other)

    pg_proxy.cut()
    assert datetime.now(timezone.utc) < run_date - timedelta(seconds=4), "cut too late for this test"
    for job_id in held:
        harness.wait_job(proxy, job_id, {"done"}, timeout=30, alive=(other,))
    assert cut_off.alive  # it waits for the job store, as a lone daemon would
    pg_proxy.restore()
    assert cut_off.wait(30) == 3, cut_off.log()
    assert "this daemon's heartbeat lapsed" in cut_off.log()
    time.sleep(1)  # a duplicate run, if any, would land now
    runs = [run for job_id in held for run in harness.runs(job_id)]
    assert sorted(run["tag"] for run in runs) == sorted(held)
    assert {run["pid"] for run in runs} == {other.pid}
    assert all(run["at"] >= run_date.timestamp() - 0.05 for run in runs)


def test_postgresql_restarted_under_three_daemons(tmp_path: Path, private_postgres: Any) -> None:
    """The job store (a PostgreSQL of the test's own) restarts under three
    daemons and load, down for longer than the heartbeats' ttl: no daemon is
    declared dead for the outage they all went through, and every job runs
    once."""
    var = tmp_path / "var"
    var.mkdir()
    oracle = str(tmp_path / "oracle.sqlite")
    settings = make_settings(var, "redis", "postgresql", **{"executor.max_workers": "4"})
    settings["scheduler.jobstore.url"] = private_postgres.url
    settings["sampleapp.oracle"] = oracle
    ini = write_ini(tmp_path / "daemon.ini", settings)
    scheduler = scheduler_for(settings)
    assert scheduler.get_job("no-such-job") is None
    rng = random.Random(7)
    accepted: dict[str, str] = {}
    daemons = [Daemon.start(ini) for _ in range(3)]
    try:
        wait_until(
            lambda: len(scheduler.get_daemons()[0]["daemons"]) == 3, "the three daemons to run", alive=tuple(daemons)
        )
        produce(scheduler, oracle, rng, accepted, 60)
        private_postgres.restart(down=5.0)  # longer than the heartbeats' ttl (3 s)
        produce(scheduler, oracle, random.Random(8), accepted, 60, prefix="after-")

        def settled() -> bool:
            try:
                found = books(scheduler, oracle, accepted)
            except sa.exc.OperationalError:
                return False
            return not found["lost"] and not found["left_started"]

        wait_until(settled, "every accepted job to reach a final state", 150, alive=tuple(daemons), interval=0.5)
        time.sleep(1)
        found = books(scheduler, oracle, accepted)
        assert found["duplicates"] == [] and found["over_run"] == [] and found["unrun_done"] == []
        assert all(daemon.alive for daemon in daemons), [daemon.log()[-3000:] for daemon in daemons]
        for daemon in daemons:
            assert "heartbeat lapsed" not in daemon.log()
            assert daemon.terminate() == 0, daemon.log()
    finally:
        for daemon in daemons:
            daemon.close()
        scheduler.shutdown()
