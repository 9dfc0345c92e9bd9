"""Daemons that die: stored jobs survive ``kill -9``, every daemon of a queue
runs jobs, and the others take over the work of one that died or was paused."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from integration.conftest import DEADLINE, wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_TTL = 3.0  # conftest.make_settings


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_stored_date_job_survives_kill_9_and_runs_once(harness):
    proxy = harness.proxy()
    first = harness.start()
    harness.wait_active(proxy, first)
    date_id = tag("date")
    run_date = datetime.now(timezone.utc) + timedelta(seconds=4)
    proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, date_id], id=date_id)
    harness.wait_job(proxy, date_id, {"scheduled"}, alive=(first,))

    first.kill()
    assert harness.runs(date_id) == []
    second = harness.start()
    record = harness.wait_job(proxy, date_id, {"done"}, alive=(second,))
    assert record["runs"] == 1

    # Exactly once: a job sent after it, and run after it, finds one run only.
    after_id = tag("after")
    proxy.add_async_job(jobs.record, args=[harness.oracle, after_id], id=after_id)
    harness.wait_job(proxy, after_id, {"done"}, alive=(second,))
    (run,) = harness.runs(date_id)
    assert run["pid"] == second.pid
    assert run["at"] >= run_date.timestamp() - 0.05
    assert proxy.get_job(date_id)["runs"] == 1


def test_a_daemon_takes_no_more_messages_than_it_has_free_threads(make_harness):
    """Two daemons of two threads each, paused while a burst of eight slow
    jobs arrives on Redis, then resumed: neither takes the whole burst (the
    broker's prefetch of 64 would allow it), the other's threads do their
    share."""
    harness = make_harness(broker="redis", store="postgresql", **{"executor.max_workers": "2"})
    proxy = harness.proxy()
    daemons = harness.start_active(proxy, 2)
    burst = [tag("burst") for _ in range(8)]
    for daemon in daemons:
        daemon.send(signal.SIGSTOP)
    try:
        for job_id in burst:
            proxy.add_async_job(jobs.slow, args=[harness.oracle, job_id, 1.0], id=job_id, immediate=True)
    finally:
        for daemon in daemons:
            daemon.send(signal.SIGCONT)
    for job_id in burst:
        harness.wait_job(proxy, job_id, {"done"}, alive=tuple(daemons))
    ran = [run["pid"] for job_id in burst for run in harness.runs(job_id) if run["phase"] == "start"]
    assert sorted(ran.count(daemon.pid) for daemon in daemons) >= [2, 2], ran
    assert len(ran) == 8


def test_every_daemon_runs_jobs_and_a_survivor_takes_over_the_killed_ones(make_harness):
    """Three daemons on one queue (Redis, PostgreSQL): each runs jobs; the
    date jobs the killed two had stored run in the survivor, once each."""
    # A consumer takes up to broker.prefetch waiting messages at once: a small
    # one leaves some of a burst to the others.
    harness = make_harness(broker="redis", store="postgresql", **{"broker.prefetch": "2"})
    proxy = harness.proxy()
    daemons = harness.start_active(proxy, 3)

    first = [tag("first") for _ in range(60)]
    for job_id in first:
        proxy.add_async_job(jobs.slow, args=[harness.oracle, job_id, 0.1], id=job_id)
    for job_id in first:
        harness.wait_job(proxy, job_id, {"done"}, alive=tuple(daemons))
    pids = {run["pid"] for job_id in first for run in harness.runs(job_id) if run["phase"] == "start"}
    assert len(pids) >= 2, pids  # the broker shares them out: not one daemon and two standing by

    # Date jobs stored by all three, then two of them killed before they are due.
    run_date = datetime.now(timezone.utc) + timedelta(seconds=3)
    dated = [tag("date") for _ in range(12)]
    for job_id in dated:
        proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, job_id], id=job_id)
    for job_id in dated:
        harness.wait_job(proxy, job_id, {"scheduled"}, alive=tuple(daemons))
    survivor, *killed = daemons
    for daemon in killed:
        daemon.kill()
    for job_id in dated:
        harness.wait_job(proxy, job_id, {"done"}, timeout=LEASE_TTL * 3 + DEADLINE, alive=(survivor,))
    runs = [run for job_id in dated for run in harness.runs(job_id)]
    assert sorted(run["tag"] for run in runs) == sorted(dated)  # each once
    assert {run["pid"] for run in runs} == {survivor.pid}
    assert all(run["at"] >= run_date.timestamp() - 0.05 for run in runs)
    assert [d["daemons"] for d in proxy.get_daemons()][0][0]["pid"] == survivor.pid


def test_a_paused_daemon_is_taken_over_and_exits_when_resumed(make_harness):
    """A daemon that is paused (SIGSTOP: its process still exists) is dead to
    the others once its heartbeat expires: another runs the date job it had
    stored; resumed, it finds its heartbeat gone and exits 3 without running
    anything.

    On Redis and PostgreSQL: with SQLite files, a process stopped in the middle
    of a write transaction holds the file's lock until it is resumed, so the
    producer (broker file) or the other daemon (job-store file) would wait for it."""
    harness = make_harness(broker="redis", store="postgresql")
    proxy = harness.proxy()
    paused = harness.start()
    harness.wait_active(proxy, paused)
    job_id = tag("claimed")
    run_date = time.time() + 2 * LEASE_TTL
    proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"scheduled"}, alive=(paused,))  # stored, so held, by the first daemon
    other = harness.start()
    harness.wait_active(proxy, other)

    paused.send(signal.SIGSTOP)
    assert time.time() < run_date - 1, "paused too late for this test"
    harness.wait_job(proxy, job_id, {"done"}, timeout=LEASE_TTL * 3 + DEADLINE, alive=(other,))
    (run,) = harness.runs(job_id)
    assert run["pid"] == other.pid
    assert run["at"] >= run_date - 0.05

    paused.send(signal.SIGCONT)
    assert paused.wait() == 3, paused.log()
    assert "this daemon's heartbeat lapsed" in paused.log()
    assert {run["pid"] for run in harness.runs()} == {other.pid}


def test_resumed_former_leader_does_not_lose_a_due_job(harness):
    """Fencing must cover the job store, not just the run: a paused daemon
    that resumes after its heartbeat expired must leave due jobs to the others."""
    proxy = harness.proxy()
    old = harness.start()
    harness.wait_active(proxy, old)
    new = harness.start()
    harness.wait_active(proxy, new)

    # The old leader stores a date job, then is paused before it is due.
    date_id = tag("date")
    run_date = time.time() + 2 * LEASE_TTL
    proxy.add_date_job(jobs.record, run_date, args=[harness.oracle, date_id], id=date_id)
    harness.wait_job(proxy, date_id, {"scheduled"}, alive=(old,))
    old.send(signal.SIGSTOP)
    # The other one is paused too, just before the job comes due.
    wait_until(lambda: time.time() > run_date - 0.5, "the job to come nearly due")
    new.send(signal.SIGSTOP)
    wait_until(lambda: time.time() > run_date + 0.5, "the job to be due")
    # The old one wakes first: its heartbeat expired, so it must not touch the job.
    old.send(signal.SIGCONT)
    assert old.wait() == 3, old.log()
    new.send(signal.SIGCONT)

    record = harness.wait_job(proxy, date_id, {"done", "failed", "missed"}, timeout=15, alive=(new,))
    assert record["status"] == "done"
    assert [run["pid"] for run in harness.runs(date_id)] == [new.pid]


class BrokerClaims:
    """Moves one message of the test's queue straight into a daemon's claims,
    by hand, on Redis (its processing list) or the SQL transport (its row)."""

    def __init__(self, settings: Any) -> None:
        from pyramid_scheduler.brokers.connection import make_queue

        self.settings = settings
        self.queue = make_queue(settings, "jobs").name
        self.aside = f"{self.queue}:aside"
        if settings.broker.kind == "sql":
            from pyramid_scheduler.brokers.sql import engine_for

            self.sql = engine_for(settings.broker.url)
        else:
            import redis

            from conftest import REDIS_URL

            self.redis = redis.Redis.from_url(REDIS_URL)

    def set_aside(self) -> None:
        """Take the one message waiting off the queue."""
        if hasattr(self, "redis"):
            assert self.redis.lmove(self.queue, self.aside, "RIGHT", "LEFT") is not None
        else:
            self._move(self.queue, self.aside)

    def hold(self, owner: str) -> None:
        """Put the message set aside in *owner*'s claims."""
        from pyramid_scheduler.brokers.redis import processing_key

        if hasattr(self, "redis"):
            assert self.redis.lmove(self.aside, processing_key(self.queue, owner), "RIGHT", "LEFT") is not None
        else:
            self._move(self.aside, self.queue, visible_at=time.time() + 3600, claimed_by=owner)

    def held(self, owner: str) -> int:
        from pyramid_scheduler.brokers.redis import processing_key

        if hasattr(self, "redis"):
            return int(self.redis.llen(processing_key(self.queue, owner)))
        from pyramid_scheduler.brokers.sql import messages

        with self.sql.connect() as conn:
            return len(
                conn.execute(
                    sa.select(messages.c.id).where(messages.c.queue == self.queue, messages.c.claimed_by == owner)
                ).all()
            )

    def _move(self, source: str, target: str, **values: Any) -> None:
        from pyramid_scheduler.brokers.sql import messages

        with self.sql.begin() as conn:
            moved = conn.execute(
                messages.update().where(messages.c.queue == source).values(queue=target, **values)
            ).rowcount
        assert moved == 1

    def close(self) -> None:
        if hasattr(self, "redis"):
            self.redis.delete(self.aside, *self.redis.keys(f"{self.queue}:processing*"))
            self.redis.close()


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_a_live_daemons_broker_claim_stays_its_own_until_it_is_killed(make_harness, broker):
    """A message a live daemon claimed (being handled, as far as the others
    know) is not given back when another daemon starts; once that daemon is
    killed, the daemon doing the single-owner work gives it back while it
    runs on, and the job runs there, once."""
    harness = make_harness(broker=broker, store="postgresql")
    proxy = harness.proxy()
    claims = BrokerClaims(proxy.settings)
    try:
        # The message, sent while no daemon runs, set aside until the first one does.
        held_id = tag("held")
        proxy.add_async_job(jobs.record, args=[harness.oracle, held_id], id=held_id)
        claims.set_aside()
        first = harness.start()
        harness.wait_active(proxy, first)
        probe = tag("probe")  # once it runs, the first daemon consumes (it gave back its own claims)
        proxy.add_async_job(jobs.record, args=[harness.oracle, probe], id=probe)
        harness.wait_runs(probe, alive=(first,))
        (row,) = proxy.get_daemons()[0]["daemons"]
        owner = row["owner"]
        claims.hold(owner)  # taken by the first daemon

        second = harness.start()
        harness.wait_active(proxy, second)
        # Once the second daemon runs a job it has been consuming, after its
        # start's release of the dead daemons' claims.
        for _ in range(50):
            probe = tag("probe")
            proxy.add_async_job(jobs.record, args=[harness.oracle, probe], id=probe)
            (run,) = harness.wait_runs(probe, alive=(first, second))
            if run["pid"] == second.pid:
                break
        else:
            pytest.fail("the second daemon ran none of 50 jobs")
        assert claims.held(owner) == 1
        assert harness.runs(held_id) == []

        first.kill()
        harness.wait_job(proxy, held_id, {"done"}, timeout=LEASE_TTL * 3 + DEADLINE, alive=(second,))
        (run,) = harness.runs(held_id)
        assert run["pid"] == second.pid
        assert claims.held(owner) == 0
        assert f"taken by dead daemon(s) {owner} and not finished are back" in second.log()
    finally:
        claims.close()
