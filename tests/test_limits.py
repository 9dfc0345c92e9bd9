"""Flow limits (``max_concurrency``, ``rate_limit``): their checks at
``add_*_job`` and at the daemon's door, and the testing kit honouring them
with its fake clock (the daemon's own execution path on SQLite).

The limits across real daemons are tested in tests/integration/test_limits.py,
and a daemon killed holding a slot in tests/faults/test_limits_kill.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from pyramid.config import Configurator

from pyramid_scheduler import InvalidJob
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.store.slots import Slots
from pyramid_scheduler.testing import TestingScheduler
from pyramid_scheduler.testing_limits import next_start, slots_taken
from pyramid_scheduler.wire.limits import parse_rate
from pyramid_scheduler.wire.messages import decode

CALLS: list[str] = []


def work(tenant: str, n: int) -> str:
    CALLS.append(f"{tenant}-{n}")
    return f"{tenant}-{n}"


def tick(n: int) -> int:
    CALLS.append(f"tick-{n}")
    return n


@pytest.fixture
def scheduler() -> TestingScheduler:
    CALLS.clear()
    config = Configurator(settings={"scheduler.limits.poll": "2"})
    config.include("pyramid_scheduler.testing")
    config.commit()
    made = config.registry.scheduler
    assert isinstance(made, TestingScheduler)
    return made


# -- checks at add_*_job ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency: expected 1 to 10000, got 0"),
        ({"max_concurrency": "2"}, "max_concurrency: expected int"),
        ({"concurrency_key": "k"}, "concurrency_key: needs max_concurrency=N"),
        ({"rate_limit": "5/d"}, "rate_limit: expected 'N/s', 'N/m' or 'N/h'"),
        ({"rate_limit": "0/s"}, "rate_limit: expected 'N/s', 'N/m' or 'N/h'"),
        ({"rate_key": "k"}, "rate_key: needs rate_limit="),
        ({"max_concurrency": 2, "concurrency_key": "x" * 201}, "concurrency_key: expected 1 to 200 characters"),
        ({"max_concurrency": 2, "concurrency_key": "t:{2}"}, "concurrency_key: {2} names no argument"),
        ({"max_concurrency": 2, "concurrency_key": "t:{0.__class__}"}, "concurrency_key: only plain fields"),
        ({"max_concurrency": 2, "concurrency_key": "t:{0!r}"}, "concurrency_key: only plain fields"),
        ({"max_concurrency": 2, "concurrency_key": "t:{"}, "concurrency_key: not a valid template"),
        ({"max_concurrency": 2, "durable": False}, "durable: a durable=False job skips the job store"),
    ],
)
def test_bad_limits_are_refused_at_add_job_naming_the_option(scheduler: TestingScheduler, options, message):
    with pytest.raises(InvalidJob, match=message.replace("(", r"\(").replace("{", r"\{").replace("?", r"\?")):
        scheduler.add_async_job(work, args=["a", 1], **options)
    assert scheduler.get_jobs() == []


def test_limits_are_refused_on_recurring_jobs(scheduler: TestingScheduler):
    with pytest.raises(InvalidJob, match="max_concurrency: only one-off jobs"):
        scheduler.add_interval_job(tick, minutes=1, args=[1], max_concurrency=1)
    with pytest.raises(InvalidJob, match="rate_limit: only one-off jobs"):
        scheduler.add_cron_job(tick, crontab="* * * * *", args=[1], rate_limit="1/s")


def test_key_templates_are_formatted_over_the_arguments(scheduler: TestingScheduler):
    by_position = scheduler.add_async_job(work, args=["acme", 1], max_concurrency=2, concurrency_key="tenant:{0}")
    by_name = scheduler.add_async_job(
        work, kwargs={"tenant": "initech", "n": 2}, rate_limit="10/m", rate_key="tenant:{tenant}"
    )
    assert scheduler.get_job(by_position)["options"] == {"max_concurrency": 2, "concurrency_key": "tenant:acme"}
    assert scheduler.get_job(by_name)["options"] == {"rate_limit": "10/m", "rate_key": "tenant:initech"}


def test_the_door_refuses_what_the_producer_refuses():
    message = {
        "v": 1,
        "op": "add",
        "id": "j1",
        "mid": "m" * 32,
        "queue": "default",
        "func": "test_limits:work",
        "args": ["a", 1],
        "kwargs": {},
        "trigger": {"type": "now"},
        "options": {"rate_limit": "fast"},
    }
    with pytest.raises(InvalidMessage, match="rate_limit: expected 'N/s'"):
        decode(json.loads(json.dumps(message)))


def test_parse_rate():
    assert parse_rate("100/m") == (100, 60.0)
    assert parse_rate(" 5 / s ") == (5, 1.0)
    assert parse_rate("3/h") == (3, 3600.0)


# -- the testing kit, with the fake clock -------------------------------------------


def test_rate_limit_delays_runs_in_order_on_the_fake_clock(scheduler: TestingScheduler):
    ids = [scheduler.add_async_job(tick, args=[n], rate_limit="2/s") for n in range(5)]
    first = scheduler.run_pending()
    assert [run["status"] for run in first] == ["done"]  # the others wait for their reserved starts
    assert CALLS == ["tick-0"]
    waiting = scheduler.get_job(ids[1])
    assert waiting["status"] == "waiting"
    assert "rate limit: 2/s for key 'test_limits:tick'" in waiting["waiting_reason"]

    assert next_start(scheduler, "test_limits:tick") == scheduler.clock.now() + timedelta(seconds=2.5)
    scheduler.clock.advance(seconds=0.5)
    assert CALLS == ["tick-0", "tick-1"]
    scheduler.clock.advance(seconds=1.5)
    assert CALLS == [f"tick-{n}" for n in range(5)]  # never dropped, in order
    assert all(scheduler.get_job(job_id)["status"] == "done" for job_id in ids)
    assert scheduler.get_job(ids[1])["waiting_reason"] is None


def test_concurrency_limit_waits_for_a_slot_on_the_fake_clock(scheduler: TestingScheduler):
    with slots_taken(scheduler, "tenant:acme"):  # another daemon's run holds the only slot
        job_id = scheduler.add_async_job(work, args=["acme", 1], max_concurrency=1, concurrency_key="tenant:{0}")
        other = scheduler.add_async_job(work, args=["initech", 1], max_concurrency=1, concurrency_key="tenant:{0}")
        assert [run["job_id"] for run in scheduler.run_pending()] == [other]  # another key: not held
        record = scheduler.get_job(job_id)
        assert record["status"] == "waiting"
        assert record["waiting_reason"] == (
            "concurrency limit: 1 run(s) with key 'tenant:acme' already running; waiting for a slot"
        )
        scheduler.clock.advance(seconds=10)
        assert scheduler.get_job(job_id)["status"] == "waiting"  # polled, still held
        assert CALLS == ["initech-1"]
        assert [job["id"] for job in scheduler.get_jobs(status="waiting")] == [job_id]

    scheduler.clock.advance(seconds=3)  # within one poll (2 s, plus up to half of it)
    assert CALLS == ["initech-1", "acme-1"]
    assert scheduler.get_job(job_id)["status"] == "done"
    with slots_taken(scheduler, "tenant:acme"):  # the run gave its slot back
        pass


def test_slots_taken_refuses_what_it_cannot_hold(scheduler: TestingScheduler):
    with pytest.raises(ValueError, match="count must be 1 or more"), slots_taken(scheduler, "k", 0):
        pass
    with slots_taken(scheduler, "k", 2):
        with pytest.raises(ValueError, match="slot 0 of 'k' is held already"), slots_taken(scheduler, "k"):
            pass
    with slots_taken(scheduler, "k", 2):  # all given back
        pass


def test_a_run_gives_its_slot_back_when_it_fails(scheduler: TestingScheduler):
    def held() -> Any:
        return Slots(scheduler._ledger()).held("test_limits:boom")

    job_id = scheduler.add_async_job(boom, max_concurrency=1)
    assert [run["status"] for run in scheduler.run_pending()] == ["failed"]
    assert held() == 0
    again = scheduler.add_async_job(boom, max_concurrency=1)
    assert [run["status"] for run in scheduler.run_pending()] == ["failed"]
    assert {scheduler.get_job(job_id)["status"], scheduler.get_job(again)["status"]} == {"failed"}


def boom() -> None:
    raise ValueError("boom")


@pytest.mark.parametrize(("action", "status"), [("cancel_job", "canceled"), ("pause_job", "paused")])
def test_a_waiting_job_can_be_canceled_or_paused(scheduler: TestingScheduler, action, status):
    ids = [scheduler.add_async_job(tick, args=[n], rate_limit="1/m") for n in range(2)]
    scheduler.run_pending()
    assert scheduler.get_job(ids[1])["status"] == "waiting"
    getattr(scheduler, action)(ids[1])
    scheduler.run_pending()
    assert scheduler.get_job(ids[1])["status"] == status
    scheduler.clock.advance(timedelta(minutes=5))
    assert CALLS == ["tick-0"]
    if action == "cancel_job":
        return
    scheduler.resume_job(ids[1])
    scheduler.clock.advance(timedelta(minutes=1))
    assert CALLS == ["tick-0", "tick-1"]  # its start was reserved already: no second wait
    assert scheduler.get_job(ids[1])["status"] == "done"


def test_delayed_date_jobs_are_not_missed_past_their_grace(scheduler: TestingScheduler):
    when = scheduler.clock.now() + timedelta(minutes=1)
    ids = [
        scheduler.add_date_job(tick, when, args=[n], rate_limit="1/m", misfire_grace_time=1, id=f"d{n}")
        for n in range(3)
    ]
    scheduler.clock.advance(minutes=1)
    assert CALLS == ["tick-0"]
    scheduler.clock.advance(minutes=3)
    # Each delayed run is due at its reserved start: never late, never missed.
    assert CALLS == ["tick-0", "tick-1", "tick-2"]
    assert [scheduler.get_job(job_id)["status"] for job_id in ids] == ["done"] * 3
    assert [len(scheduler.get_runs(job_id)) for job_id in ids] == [1, 1, 1]


def test_both_limits_together(scheduler: TestingScheduler):
    """The slot first: a run held for a slot reserves no start, and a run
    that waits for its start holds no slot meanwhile."""
    with slots_taken(scheduler, "tenant:acme"):
        held = scheduler.add_async_job(
            work, args=["acme", 1], max_concurrency=1, concurrency_key="tenant:{0}", rate_limit="1/m"
        )
        scheduler.run_pending()
        assert "concurrency limit" in scheduler.get_job(held)["waiting_reason"]
        assert next_start(scheduler, "tenant:acme") is None  # no start reserved while it had no slot
    first = scheduler.add_async_job(work, args=["acme", 2], max_concurrency=1, concurrency_key="tenant:{0}")
    scheduler.clock.advance(seconds=3)  # the held run takes the slot and the first start
    # (first, due at once, has no rate limit: it took the free slot before
    # the held run's next check; held runs are not queued in order)
    assert sorted(CALLS) == ["acme-1", "acme-2"]
    later = [
        scheduler.add_async_job(
            work, args=["acme", n], max_concurrency=1, concurrency_key="tenant:{0}", rate_limit="1/m"
        )
        for n in (3, 4)
    ]
    scheduler.run_pending()
    assert "rate limit: 1/m for key 'tenant:acme'" in scheduler.get_job(later[0])["waiting_reason"]
    assert Slots(scheduler._ledger()).held("tenant:acme") == 0  # waiting for its start, it holds no slot
    scheduler.clock.advance(minutes=3)
    assert CALLS[2:] == ["acme-3", "acme-4"]
    assert all(scheduler.get_job(job_id)["status"] == "done" for job_id in [held, first, *later])
