"""Chains and groups with real ``pscheduler`` daemons: results handed on
through the job store, a failure canceling the rest, a group's then step
after its members, and members shared out between two daemons."""

from __future__ import annotations

import uuid

import pytest

from integration.sampleapp import flows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_a_chain_of_three_passes_its_results_along(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    names = [tag("a"), tag("b"), tag("c")]
    flow = proxy.chain(
        proxy.step(flows.begin, harness.oracle, names[0], 1),
        proxy.step(flows.add, harness.oracle, names[1], 10),
        proxy.step(flows.add, harness.oracle, names[2], 100),
    )
    last = harness.wait_job(proxy, flow.last, {"done"}, alive=(daemon,))
    assert last["result"] == 111
    records = [proxy.get_job(job_id) for job_id in flow.job_ids]
    assert [r["result"] for r in records] == [1, 11, 111]
    assert [(r["parent"], r["position"], r["children"]) for r in records] == [
        (flow.id, 0, [flow.job_ids[1]]),
        (flow.id, 1, [flow.job_ids[2]]),
        (flow.id, 2, []),
    ]
    assert [len(harness.runs(name)) for name in names] == [1, 1, 1]
    # In order: each step ran after the one before it had ended.
    times = [harness.runs(name)[0]["at"] for name in names]
    assert times == sorted(times)


def test_a_failing_step_cancels_the_rest_with_the_reason(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    names = [tag("ok"), tag("fails"), tag("never"), tag("never")]
    flow = proxy.chain(
        proxy.step(flows.begin, harness.oracle, names[0], 1),
        proxy.step(flows.fail, harness.oracle, names[1]).options(retries=1, retry_delay=0.5),
        proxy.step(flows.add, harness.oracle, names[2], 1),
        proxy.step(flows.add, harness.oracle, names[3], 1),
    )
    last = harness.wait_job(proxy, flow.last, {"canceled"}, alive=(daemon,))
    failed = proxy.get_job(flow.job_ids[1])
    assert failed["status"] == "failed" and failed["runs"] == 2  # after its retry
    reason = (
        f"chain {flow.id}: step 1 ({flow.job_ids[1]}) ended failed: "
        f"RuntimeError: sampleapp step {names[1]} fails on purpose"
    )
    assert proxy.get_job(flow.job_ids[2])["error"] == last["error"] == reason
    assert proxy.get_job(flow.job_ids[2])["status"] == "canceled"
    assert len(harness.runs(names[1])) == 2 and harness.runs(names[2]) == []


def test_a_group_of_four_then_gets_the_results_in_order(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    members = [
        proxy.step(flows.member, harness.oracle, tag("m"), value, 0.3 * (4 - value)).options(name=f"member {value}")
        for value in range(4)
    ]  # the first takes longest: ends last
    flow = proxy.group(members, then=proxy.step(flows.gather, harness.oracle, tag("then")))
    then = harness.wait_job(proxy, flow.then_id, {"done"}, alive=(daemon,))
    assert [result["value"] for result in then["result"]] == [0, 1, 2, 3]
    assert (then["parent"], then["position"]) == (flow.id, 4)
    assert all(proxy.get_job(job_id)["children"] == [flow.then_id] for job_id in flow.job_ids)


def test_two_daemons_share_a_groups_members_and_then_runs_once(make_harness):
    harness = make_harness(broker="redis", store="postgresql", **{"executor.max_workers": "2"})
    proxy = harness.proxy()
    daemons = harness.start_active(proxy, 2)
    then_tag = tag("then")
    members = [proxy.step(flows.member, harness.oracle, tag("m"), value, 1.0) for value in range(8)]
    flow = proxy.group(members, then=proxy.step(flows.gather, harness.oracle, then_tag))
    then = harness.wait_job(proxy, flow.then_id, {"done"}, alive=tuple(daemons))
    assert [result["value"] for result in then["result"]] == list(range(8))
    assert {result["pid"] for result in then["result"]} == {daemon.pid for daemon in daemons}
    assert len(harness.runs(then_tag)) == 1


def test_a_step_on_a_queue_its_daemon_does_not_run_is_sent_to_the_daemon_that_does(make_harness):
    harness = make_harness(queues="jobs reports")
    proxy = harness.proxy()
    jobs_daemon, reports_daemon = harness.start("-q", "jobs"), harness.start("-q", "reports")
    names = [tag("on-jobs"), tag("on-reports"), tag("on-jobs")]
    flow = proxy.chain(
        proxy.step(flows.begin, harness.oracle, names[0], 1),
        proxy.step(flows.add, harness.oracle, names[1], 10).options(queue="reports"),
        proxy.step(flows.add, harness.oracle, names[2], 100).options(queue="jobs"),
    )
    last = harness.wait_job(proxy, flow.last, {"done"}, alive=(jobs_daemon, reports_daemon))
    assert last["result"] == 111
    assert [proxy.get_job(job_id)["queue"] for job_id in flow.job_ids] == ["jobs", "reports", "jobs"]
    pids = [run["pid"] for name in names for run in harness.runs(name)]
    assert pids == [jobs_daemon.pid, reports_daemon.pid, jobs_daemon.pid]
