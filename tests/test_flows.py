"""Chains and groups (pyramid_scheduler.web.flows, store.flows) in the testing kit:
the daemon's own engine on the fake clock, through a real Configurator."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from pyramid_scheduler import InvalidJob, InvalidQueue
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.testing import TestingScheduler
from pyramid_scheduler.wire.messages import JobRequest, admit, decode

CALLS: list[tuple[str, Any]] = []


def first(n: int) -> int:
    CALLS.append(("first", n))
    return n


def plus(previous: int, k: int) -> int:
    CALLS.append(("plus", previous))
    return previous + k


def boom(previous: Any) -> None:
    CALLS.append(("boom", previous))
    raise ValueError("boom fails")


def collect(results: list[Any], tag: str = "") -> list[Any]:
    CALLS.append(("collect", results))
    return results


def no_arguments() -> None:
    """Cannot take a previous result."""


def make(**settings: str) -> TestingScheduler:
    CALLS.clear()
    config = Configurator(settings={"scheduler.queues": "default other", **settings})
    config.include("pyramid_scheduler.testing")
    config.commit()
    scheduler = config.registry.scheduler
    assert isinstance(scheduler, TestingScheduler)
    return scheduler


def test_a_chain_passes_each_result_on():
    scheduler = make()
    flow = scheduler.chain(scheduler.step(first, 1), scheduler.step(plus, 10), scheduler.step(plus, 100))
    assert len(flow.job_ids) == 3 and flow.last == flow.job_ids[2] and str(flow) == flow.id
    assert scheduler.get_job(flow.job_ids[1]) is None  # made when step 0 succeeds
    scheduler.run_pending()
    assert CALLS == [("first", 1), ("plus", 1), ("plus", 11)]
    records = [scheduler.get_job(job_id) for job_id in flow.job_ids]
    assert [r["status"] for r in records] == ["done", "done", "done"]
    assert [r["result"] for r in records] == [1, 11, 111]
    assert [(r["parent"], r["position"]) for r in records] == [(flow.id, 0), (flow.id, 1), (flow.id, 2)]
    assert [r["children"] for r in records] == [[flow.job_ids[1]], [flow.job_ids[2]], []]
    assert records[1]["args"] == [1, 10]


def test_a_failed_step_cancels_the_rest_with_the_reason():
    scheduler = make()
    flow = scheduler.chain(
        scheduler.step(first, 1),
        scheduler.step(boom).options(retries=1, retry_delay=30),
        scheduler.step(plus, 1),
        scheduler.step(plus, 2),
    )
    scheduler.run_pending()
    assert scheduler.get_job(flow.job_ids[1])["status"] == "scheduled"  # its retry is due in 30 s
    scheduler.clock.advance(seconds=31)
    assert [name for name, _ in CALLS] == ["first", "boom", "boom"]
    failed, *rest = (scheduler.get_job(job_id) for job_id in flow.job_ids[1:])
    assert failed["status"] == "failed"
    for position, record in enumerate(rest, start=2):
        assert record["status"] == "canceled"
        assert record["position"] == position
        assert record["error"] == (f"chain {flow.id}: step 1 ({flow.job_ids[1]}) ended failed: ValueError: boom fails")


def test_a_group_then_gets_the_results_in_order():
    scheduler = make()
    members = [scheduler.step(first, n).options(queue="other" if n % 2 else None) for n in range(4)]
    flow = scheduler.group(members, then=scheduler.step(collect, tag="all"))
    assert flow.kind == "group" and len(flow.job_ids) == 4 and flow.last == flow.then_id
    scheduler.run_pending()
    then = scheduler.get_job(flow.then_id)
    assert then["status"] == "done" and then["result"] == [0, 1, 2, 3]
    assert (then["parent"], then["position"]) == (flow.id, 4)
    assert CALLS.count(("collect", [0, 1, 2, 3])) == 1
    assert scheduler.get_job(flow.job_ids[2])["children"] == [flow.then_id]


def test_a_failed_member_cancels_then_and_the_others_run_on():
    scheduler = make()
    flow = scheduler.group(
        [scheduler.step(first, 1), scheduler.step(boom, 0), scheduler.step(first, 3)], then=scheduler.step(collect)
    )
    scheduler.run_pending()
    assert [scheduler.get_job(job_id)["status"] for job_id in flow.job_ids] == ["done", "failed", "done"]
    then = scheduler.get_job(flow.then_id)
    assert then["status"] == "canceled"
    assert then["error"] == f"group {flow.id}: member 1 ({flow.job_ids[1]}) ended failed: ValueError: boom fails"
    assert not [call for call in CALLS if call[0] == "collect"]


def test_canceling_a_waiting_step_cancels_the_rest():
    scheduler = make()
    job_id = scheduler.add_date_job(first, scheduler.now() + timedelta(hours=1), args=[5], then=scheduler.step(plus, 1))
    scheduler.cancel_job(job_id)
    scheduler.clock.advance(hours=2)
    assert CALLS == []
    then = scheduler.get_job(f"{job_id}-then")
    assert then["status"] == "canceled" and then["error"].startswith(
        f"chain {job_id}: step 0 ({job_id}) ended canceled"
    )


def test_then_on_add_async_job_is_a_chain_of_two():
    scheduler = make()
    job_id = scheduler.add_async_job(first, args=[2], then=scheduler.step(plus, 3))
    scheduler.run_pending()
    assert scheduler.get_job(f"{job_id}-then")["result"] == 5
    assert scheduler.get_job(job_id)["children"] == [f"{job_id}-then"]


def test_steps_are_checked_where_they_are_made():
    scheduler = make()
    with pytest.raises(InvalidJob, match="args"):
        scheduler.step(first, object())
    with pytest.raises(InvalidQueue):
        scheduler.step(first, 1).options(queue="nowhere")
    with pytest.raises(InvalidJob, match="retries"):
        scheduler.step(first, 1).options(retries=-1)
    with pytest.raises(InvalidJob, match="durable: not an option of a step"):
        scheduler.step(first, 1).options(durable=False)
    with pytest.raises(InvalidJob, match="no_arguments"):
        scheduler.chain(scheduler.step(first, 1), scheduler.step(no_arguments))
    with pytest.raises(InvalidJob, match="step 1 is a str"):
        scheduler.chain(scheduler.step(first, 1), "tests:plus")  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match="at least one step"):
        scheduler.group([])
    with pytest.raises(InvalidJob, match="more than 100"):
        scheduler.chain(*[scheduler.step(first, 1)] * 101)
    with pytest.raises(InvalidJob, match="then: only one-off jobs"):
        scheduler.add_interval_job(first, args=[1], minutes=5, then=scheduler.step(plus, 1))
    assert scheduler.jobs == {}


def test_canceling_a_member_before_it_runs_cancels_then():
    scheduler = make()
    flow = scheduler.group([scheduler.step(first, 1), scheduler.step(first, 2)], then=scheduler.step(collect))
    scheduler.cancel_job(flow.job_ids[1])
    scheduler.run_pending()
    assert CALLS == [("first", 1)]
    then = scheduler.get_job(flow.then_id)
    assert then["status"] == "canceled"
    assert then["error"] == f"group {flow.id}: member 1 ({flow.job_ids[1]}) ended canceled"


def test_an_ended_groups_row_is_purged_with_the_finished_jobs():
    scheduler = make()
    flow = scheduler.group([scheduler.step(first, 1)], then=scheduler.step(collect))
    scheduler.run_pending()
    ledger = scheduler._ledger()
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(ledger.flows.c.status).where(ledger.flows.c.id == flow.id)).scalar() == "done"
    ledger.purge(older_than=ledger.now() + 1)
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger.flows)).scalar() == 0


@pytest.mark.parametrize(
    ("flow", "problem"),
    [
        ("chain", "flow: expected dict, got 'chain'"),
        ({"id": "f", "kind": "loop", "position": 0}, "flow.kind: expected one of chain, group, then"),
        ({"id": "f", "kind": "chain", "position": 0}, "flow: a chain step's flow has the keys id, kind, next"),
        ({"id": "f", "kind": "chain", "position": -1, "next": []}, "flow.position: expected a whole number"),
        ({"id": "f", "kind": "chain", "position": 0, "next": [{}] * 100}, "flow.next: expected a list of at most 100"),
        ({"id": "f", "kind": "chain", "position": 0, "next": [{"id": "x"}]}, "flow.next[0]: expected a step"),
        ({"id": "f", "kind": "group", "position": 4, "size": 4, "then": None}, "flow.position: 4 is not below"),
        (
            {
                "id": "f",
                "kind": "group",
                "position": 0,
                "size": 2,
                "then": {"id": "t", "queue": "q", "func": "m:f", "args": [], "kwargs": {}, "options": {"durable": 0}},
            },
            "flow.then.options: durable is not an option of a step",  # whatever its value
        ),
    ],
)
def test_the_door_refuses_a_bad_flow_naming_the_field(flow: Any, problem: str):
    body = {
        "v": 1,
        "op": "add",
        "mid": "m1",
        "id": "j1",
        "queue": "default",
        "sent_at": "2026-01-01T00:00:00+00:00",
        "func": "test_flows:first",
        "args": [1],
        "kwargs": {},
        "trigger": {"type": "now", "timezone": "UTC", "run_date": "2026-01-01T00:00:00+00:00"},
        "options": {"flow": flow},
    }
    with pytest.raises(InvalidMessage, match=re.escape(problem)):
        decode(json.dumps(body))
    body["trigger"] = {"type": "interval", "timezone": "UTC", "seconds": 5}
    body["options"] = {"flow": {"id": "f", "kind": "then", "position": 1}}
    with pytest.raises(InvalidMessage, match="then: only one-off jobs"):
        decode(json.dumps(body))


def test_the_daemon_refuses_a_step_outside_the_allowed_modules_before_the_chain_starts():
    step = {"id": "f-1", "queue": "default", "func": "os:system", "args": ["true"], "kwargs": {}, "options": {}}
    request = JobRequest(
        op="add",
        id="f-0",
        queue="default",
        func="test_flows:first",
        args=[1],
        trigger={"type": "now", "timezone": "UTC", "run_date": "2026-01-01T00:00:00+00:00"},
        options={"flow": {"id": "f", "kind": "chain", "position": 0, "next": [step]}},
    )
    request = decode(request.encode())  # the door lets it through: a well-formed flow
    with pytest.raises(InvalidJob, match="func 'os:system': module 'os' is not in scheduler.allowed_modules"):
        admit(request, SchedulerSettings(allowed_modules=("test_flows",)))
    assert admit(request, SchedulerSettings())[0] == request
