"""Flow options: ``priority`` and ``expires`` refused early, and the worker
pool's order (higher priority first, the aged before all) through a real
:class:`concurrent.futures.ThreadPoolExecutor`."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from pyramid.exceptions import ConfigurationError

from integration.sampleapp import jobs
from producers import published
from pyramid_scheduler.daemon.flow import PriorityWork
from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.wire.messages import decode


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.add_async_job(jobs.noop, args=[1], priority=10), "priority: expected a whole number from 0 to 9"),
        (lambda s: s.add_async_job(jobs.noop, args=[1], priority="high"), "priority: expected int"),
        (lambda s: s.add_async_job(jobs.noop, args=[1], expires=0), "expires: expected seconds from now above zero"),
        (lambda s: s.add_async_job(jobs.noop, args=[1], expires=datetime(2030, 1, 1)), "naive datetime"),
        (
            lambda s: s.add_async_job(jobs.noop, args=[1], expires=datetime.now(timezone.utc) - timedelta(seconds=1)),
            "already past",
        ),
        (lambda s: s.add_interval_job(jobs.noop, args=[1], minutes=5, expires=60), "expires: only one-off jobs"),
        (lambda s: s.add_cron_job(jobs.noop, args=[1], crontab="* * * * *", expires=60), "expires: only one-off jobs"),
        (lambda s: s.add_date_job(jobs.noop, args=[1], hours=2, expires=60), "not after the job's date"),
        (lambda s: s.add_async_job(jobs.noop, args=[1], durable=False, priority=5), "priority: not with durable=False"),
    ],
)
def test_bad_flow_options_are_refused_at_add(scheduler, tmp_path, call, message):
    with pytest.raises(InvalidJob, match=message):
        call(scheduler)
    assert published(tmp_path) == []


def test_flow_options_travel_as_checked(scheduler, tmp_path):
    before = datetime.now(timezone.utc).timestamp()
    scheduler.add_date_job(jobs.noop, args=[1], minutes=1, expires=120, priority=7)
    [(_, request)] = published(tmp_path)
    assert request.options["priority"] == 7
    assert before + 120 <= request.options["expires"] <= datetime.now(timezone.utc).timestamp() + 120


def test_the_door_refuses_what_the_producer_refuses(scheduler, tmp_path):
    scheduler.add_async_job(jobs.noop, args=[1], priority=2)
    [(_, request)] = published(tmp_path)
    body = request.to_wire()
    body["options"]["priority"] = 12
    with pytest.raises(InvalidMessage, match="priority: expected a whole number from 0 to 9"):
        decode(body)
    body["options"] = {"expires": 1e9}
    body["trigger"] = {"type": "cron", "minute": "*"}
    with pytest.raises(InvalidMessage, match="expires: only one-off jobs"):
        decode(body)


def test_a_queue_priority_must_name_a_queue():
    with pytest.raises(ConfigurationError, match=r"scheduler.priority.reports"):
        parse_settings({"scheduler.queues": "jobs", "scheduler.priority.reports": "5"})
    with pytest.raises(ConfigurationError, match=r"0 to 9"):
        parse_settings({"scheduler.queues": "jobs", "scheduler.priority.jobs": "10"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_in_order(work: PriorityWork, items: list[tuple[str, int]], clock: Clock, aged: str | None = None) -> list[str]:
    """Hand *items* (name, priority) to a one-thread pool taking its work from
    *work* while its thread is held; *aged*: advance the clock past the aging
    right after that item. Return the order they ran in."""
    pool = ThreadPoolExecutor(1)
    pool._work_queue = work  # as pyramid_scheduler.daemon.flow.order_pool does
    ran: list[str] = []
    held = threading.Event()
    pool.submit(held.wait)
    for name, priority in items:
        work.priorities[name] = priority
        pool.submit(ran.append, name)
        if name == aged:
            clock.now += 61
    held.set()
    pool.shutdown(wait=True)
    return ran


def make_work(clock: Clock) -> PriorityWork:
    priorities: dict[str, int] = {}
    work = PriorityWork(lambda item: priorities.get(item.args[0], 0) if item.args else 0, 60, clock)
    work.priorities = priorities  # type: ignore[attr-defined]
    return work


def test_the_pool_starts_the_higher_priority_first_then_first_come():
    clock = Clock()
    order = run_in_order(make_work(clock), [("a", 1), ("b", 5), ("c", 1), ("d", 9), ("e", 5)], clock)
    assert order == ["d", "b", "e", "a", "c"]


def test_a_batch_waiting_past_the_aging_goes_before_any_priority():
    clock = Clock()
    order = run_in_order(make_work(clock), [("a", 0), ("b", 1), ("c", 9)], clock, aged="b")
    # a and b waited 61 s (past the 60 s aging): first, oldest first; then c.
    assert order == ["a", "b", "c"]


@pytest.fixture
def kit():
    from pyramid.config import Configurator

    with Configurator(settings={"scheduler.queues": "jobs", "scheduler.priority.jobs": "3"}) as config:
        config.include("pyramid_scheduler.testing")
    yield config.registry.scheduler
    config.registry.scheduler.shutdown()


def test_the_testing_kit_runs_the_higher_priority_first(kit):
    kit.add_async_job(jobs.noop, args=[1], id="low", priority=1)
    kit.add_async_job(jobs.noop, args=[2], id="default")  # the queue's 3
    kit.add_async_job(jobs.noop, args=[3], id="high", priority=9)
    kit.run_pending()
    assert [(run["job_id"], run["status"]) for run in kit.runs] == [
        ("high", "done"),
        ("default", "done"),
        ("low", "done"),
    ]


def test_the_testing_kit_expires_a_job_not_started_in_time(kit):
    kit.add_date_job(jobs.noop, args=[1], id="late", seconds=10, expires=20)
    kit.add_date_job(jobs.noop, args=[2], id="kept", seconds=10, expires=3600)
    kit.clock.set(kit.clock.now() + timedelta(seconds=30))  # past the expiry, nothing run meanwhile
    kit.run_pending()
    assert kit.get_job("late")["status"] == "expired"
    assert kit.get_job("kept")["status"] == "done"
    assert [event.type for event in kit.events if event.job_id == "late"][-2:] == ["job.expired", "job.removed"]
    [run] = [run for run in kit.runs if run["job_id"] == "late"]
    assert run["status"] == "expired" and "not started by its expiry" in run["error"]


def test_a_worker_stops_only_when_told_even_after_the_aging_took_work():
    clock = Clock()
    work = PriorityWork(lambda item: item, 60, clock)
    work.put(1)
    work.put(9)
    clock.now += 61
    assert [work.get_nowait(), work.get_nowait()] == [1, 9]  # both aged: oldest first
    with pytest.raises(queue.Empty):  # nothing left, and no stop asked for
        work.get(timeout=0.01)
    work.put(None)
    assert work.get_nowait() is None
