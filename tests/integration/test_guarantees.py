"""The README's promises, end to end: a run cut short by a crash is reported
interrupted and not re-run; a cancel lets the current run finish and comes
after its event; a message delivered twice is stored and run once; dates are
read in ``scheduler.timezone``."""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler.brokers.connection import make_connection, make_queue
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def types_of(harness, job_id):
    return [row["type"] for row in harness.events(job_id)]


def test_run_cut_short_by_kill_9_is_reported_interrupted_not_rerun(harness):
    proxy = harness.proxy()
    first = harness.start()
    slow_id = harness.start_slow(proxy, first, 60)
    assert proxy.get_job(slow_id)["status"] == "running"
    first.kill()

    second = harness.start()
    record = harness.wait_job(proxy, slow_id, {"interrupted"}, alive=(second,))
    assert f"the daemon running it ({socket.gethostname()}:{first.pid}:" in record["error"]
    assert "stopped before the run finished" in record["error"]
    wait_until(
        lambda: types_of(harness, slow_id)[-2:] == ["job.interrupted", "job.removed"],
        "the INTERRUPTED then REMOVED events",
        alive=(second,),
    )
    interrupted = [row for row in harness.events(slow_id) if row["type"] == "job.interrupted"]
    assert [row["pid"] for row in interrupted] == [second.pid]

    after_id = tag("after")
    proxy.add_async_job(jobs.record, args=[harness.oracle, after_id], id=after_id)
    harness.wait_job(proxy, after_id, {"done"}, alive=(second,))
    assert [(run["phase"], run["pid"]) for run in harness.runs(slow_id)] == [("start", first.pid)]
    assert proxy.get_job(slow_id)["status"] == "interrupted"


def test_cancel_during_a_run_lets_it_finish_and_comes_after_its_event(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    slow_id = harness.start_slow(proxy, daemon, 1.5)
    proxy.cancel_job(slow_id)
    wait_until(lambda: "job.canceled" in types_of(harness, slow_id), "the CANCELED event", alive=(daemon,))
    assert types_of(harness, slow_id) == ["job.created", "job.executed", "job.canceled"]
    assert [run["phase"] for run in harness.runs(slow_id)] == ["start", "end"]
    record = proxy.get_job(slow_id)
    assert record["status"] == "canceled"
    assert record["runs"] == 1 and record["result"] == slow_id


def test_a_message_delivered_again_is_absorbed(harness):
    settings = parse_settings(harness.settings)
    proxy = harness.proxy()
    daemon = harness.start()
    job_id = tag("twice")
    now = datetime.now(timezone.utc)
    body = JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func="integration.sampleapp.jobs:record",
        args=[harness.oracle, job_id],
        trigger=trigger_spec("now", timezone.utc, run_date=now),
    ).encode()
    kqueue = make_queue(settings, "jobs")
    assert settings.secret is not None
    headers = {SIGNATURE_HEADER: sign_message(body, settings.secret, kqueue.routing_key)}

    def publish() -> None:
        with make_connection(settings) as conn:
            conn.Producer().publish(
                body,
                exchange="",
                routing_key=kqueue.routing_key,
                declare=[kqueue],
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
            )

    publish()
    publish()  # a duplicate publish
    harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    publish()  # a late redelivery: APScheduler has long forgotten the finished job
    after_id = tag("after")
    proxy.add_async_job(jobs.record, args=[harness.oracle, after_id], id=after_id)
    harness.wait_job(proxy, after_id, {"done"}, alive=(daemon,))

    assert len(harness.runs(job_id)) == 1
    assert proxy.get_job(job_id)["runs"] == 1
    assert daemon.log().count(f"job {job_id} (queue jobs): already stored; duplicate message") == 2
    assert "dead-lettered" not in daemon.log()


def test_dates_are_read_in_the_scheduler_timezone(make_harness):
    harness = make_harness(timezone="Asia/Tokyo")  # UTC+9 all year: never the host's zone
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    due = datetime.now(timezone.utc) + timedelta(seconds=2)
    tokyo = due.astimezone(ZoneInfo("Asia/Tokyo"))
    forms = {
        tag("naive"): tokyo.replace(tzinfo=None),
        tag("naive-iso"): tokyo.replace(tzinfo=None).isoformat(),
        tag("aware-iso"): due.astimezone(timezone(timedelta(hours=-5))).isoformat(),
        tag("epoch"): due.timestamp(),
    }
    for job_id, when in forms.items():
        proxy.add_date_job(jobs.record, when, args=[harness.oracle, job_id], id=job_id)
    for job_id in forms:
        harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
        (run,) = harness.runs(job_id)
        assert due.timestamp() - 0.05 <= run["at"] < due.timestamp() + 10, job_id
        assert proxy.get_job(job_id)["trigger"]["timezone"] == "Asia/Tokyo"
