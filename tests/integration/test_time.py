"""Time, end to end with real ``pscheduler`` daemons: late date jobs run or
are reported missed (never dropped); the hosts' zones (``TZ``) of producer and
daemon play no part; a job store whose next run time is 30 days old (a
suspended VM, a clock set forward) gives the documented catch-up outcome
without enumerating every missed fire time.

DST changes are in ``tests/integration/test_dst.py`` (a daemon whose wall
clock is faked) and, on the trigger and planning path, ``tests/test_dst.py``
and ``tests/daemon/test_catchup.py``.
"""

from __future__ import annotations

import io
import os
import pickle
import time
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.util import datetime_to_utc_timestamp

from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler.store.tables import aps_tablename
from pyramid_scheduler.store.unpickle import JobUnpickler

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc
#: scheduler.catch_up_limit in the clock-jump test (small: each run takes a while on PostgreSQL).
LIMIT = 20


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_dates_past_and_future_in_any_host_zone(make_harness, monkeypatch):
    """On PostgreSQL. The daemon runs with TZ=Asia/Tokyo (UTC+9), the
    producer with TZ=America/New_York (UTC-5/-4), scheduler.timezone is
    America/Sao_Paulo (UTC-3): aware, naive (read in scheduler.timezone), ISO
    and epoch dates all mean the same instant, to the microsecond. A date in
    the past runs within its grace; beyond it, it is reported missed (event,
    job status, a missed run), never dropped."""
    harness = make_harness(store="postgresql", timezone="America/Sao_Paulo")
    daemon = harness.start(env={"TZ": "Asia/Tokyo"})
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        proxy = harness.proxy()
        harness.wait_active(proxy, daemon)
        now = datetime.now(UTC)
        within, beyond = tag("within"), tag("beyond")
        proxy.add_date_job(
            jobs.record, now - timedelta(seconds=20), args=[harness.oracle, within], id=within, misfire_grace_time=300
        )
        proxy.add_date_job(
            jobs.record, now - timedelta(seconds=600), args=[harness.oracle, beyond], id=beyond, misfire_grace_time=300
        )

        due = now.replace(microsecond=250000) + timedelta(seconds=3)
        local = due.astimezone(ZoneInfo("America/Sao_Paulo")).replace(tzinfo=None)
        assert datetime.fromtimestamp(due.timestamp()) != local  # the host's zone is another one
        forms = {
            tag("aware"): due.astimezone(ZoneInfo("Europe/Paris")),
            tag("naive"): local,
            tag("naive-iso"): local.isoformat(),
            tag("aware-iso"): due.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
            tag("epoch"): due.timestamp(),
        }
        for job_id, when in forms.items():
            proxy.add_date_job(jobs.record, when, args=[harness.oracle, job_id], id=job_id)

        harness.wait_job(proxy, within, {"done"}, alive=(daemon,))
        assert len(harness.runs(within)) == 1
        record = harness.wait_job(proxy, beyond, {"missed"}, alive=(daemon,))
        assert "past its misfire grace time of 300s" in record["error"]
        wait_until(
            lambda: [e["type"] for e in harness.events(beyond)][-2:] == ["job.missed", "job.removed"],
            "MISSED then REMOVED",
            alive=(daemon,),
        )
        assert harness.runs(beyond) == []  # not run, and not silently dropped:
        (run,) = proxy.get_runs(beyond)
        assert run["status"] == "missed" and "misfire grace" in run["error"]
        assert run["scheduled_at"] == pytest.approx((now - timedelta(seconds=600)).timestamp(), abs=1e-3)
        assert f"job {beyond} (queue jobs): run {beyond}@" in daemon.log()

        for job_id in forms:
            harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
            (run,) = proxy.get_runs(job_id)
            assert run["scheduled_at"] == pytest.approx(due.timestamp(), abs=1e-6), job_id
            assert run["run_key"] == f"{job_id}@{due.isoformat()}"
            (ran,) = harness.runs(job_id)
            assert ran["at"] >= due.timestamp() - 0.05, job_id
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def set_back(harness, job_id: str, days: int) -> datetime:
    """Move a stored job's next run time *days* into the past, as a clock
    jumping forward would (the daemon must be stopped). Returns it."""
    settings = harness.settings
    table = aps_tablename(settings["scheduler.jobstore.tablename_prefix"], "jobs")
    engine = sa.create_engine(settings["scheduler.jobstore.url"])
    try:
        with engine.begin() as conn:
            aps = sa.Table(table, sa.MetaData(), autoload_with=conn)
            row = conn.execute(sa.select(aps.c.job_state).where(aps.c.id == job_id)).one()
            state = JobUnpickler(io.BytesIO(row.job_state)).load()
            state["next_run_time"] -= timedelta(days=days)
            conn.execute(
                aps.update()
                .where(aps.c.id == job_id)
                .values(
                    job_state=pickle.dumps(state, pickle.HIGHEST_PROTOCOL),
                    next_run_time=datetime_to_utc_timestamp(state["next_run_time"]),
                )
            )
    finally:
        engine.dispose()
    return state["next_run_time"]


# The long variant (about 30 s more) runs with TIME_ALL=1; catch_up="all" on
# PostgreSQL is also covered in-process by tests/daemon/test_catchup.py.
@pytest.mark.parametrize(
    "store,policy", [("sqlite", "skip")] + ([("postgresql", "all")] if os.environ.get("TIME_ALL") else [])
)
def test_a_clock_jump_of_30_days_gives_the_catch_up_outcome(make_harness, store, policy):
    """An interval job of 1 s whose next run time is 30 days old: 2.6 million
    fire times are overdue. skip: the latest runs, LIMIT are recorded missed
    one by one and the rest in one record with their count; all: the oldest
    LIMIT and the latest run, the rest are one record. Either way the daemon
    goes on at once with the job's regular runs."""
    harness = make_harness(store=store, catch_up_limit=LIMIT)
    proxy = harness.proxy()
    job_id = tag(f"jump-{policy}")
    proxy.add_interval_job(jobs.record, args=[harness.oracle, job_id], seconds=1, id=job_id, catch_up=policy)
    first = harness.start()
    harness.wait_runs(job_id, 1, alive=(first,))
    assert first.terminate() == 0
    before = len(harness.runs(job_id))
    behind = set_back(harness, job_id, days=30)

    second = harness.start()
    began = time.monotonic()
    harness.wait_runs(job_id, before + (1 if policy == "skip" else LIMIT + 1) + 1, timeout=60, alive=(second,))
    caught_up = time.monotonic() - began
    proxy.cancel_job(job_id)
    harness.wait_job(proxy, job_id, {"canceled"}, alive=(second,))

    missed = proxy.get_runs(job_id, status="missed", limit=10_000)
    spans = [run for run in missed if f"scheduler.catch_up_limit ({LIMIT})" in (run["error"] or "")]
    assert len(spans) == 1, [run["error"] for run in missed[:5]]
    count = int(spans[0]["error"].split()[0])
    old_runs = [
        run
        for run in proxy.get_runs(job_id, status="done", limit=10_000)
        if run["scheduled_at"] < behind.timestamp() + 86400
    ]
    print(
        f"\nclock jump of 30 days ({store}, catch_up={policy}): {count + LIMIT + 1} fire times overdue; "
        f"{len(old_runs)} of them run, {len(missed)} missed record(s) (one for {count}); regular "
        f"runs again {caught_up:.1f}s after the daemon started"
    )
    assert 30 * 86400 - 300 < count + LIMIT + 1 < 30 * 86400 + 300
    assert spans[0]["scheduled_at"] == pytest.approx(behind.timestamp() + LIMIT, abs=1e-3)
    wait_until(
        lambda: len([e for e in harness.events(job_id) if e["type"] == "job.missed"]) == len(missed),
        "a JOB_MISSED event for every missed record",
        alive=(second,),
    )
    if policy == "skip":
        assert old_runs == []
        coalesced = [run for run in missed if (run["error"] or "").startswith("coalesced")]
        assert len(coalesced) >= LIMIT
    else:
        assert len(old_runs) == LIMIT
        assert sorted(run["scheduled_at"] for run in old_runs)[:2] == pytest.approx(
            [behind.timestamp(), behind.timestamp() + 1], abs=1e-3
        )
