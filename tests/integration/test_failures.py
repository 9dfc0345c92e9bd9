"""What goes wrong, and how it shows: a job that raises, messages refused at
the daemon's door, a broker that is down."""

from __future__ import annotations

import json
import pickle
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from integration.sampleapp import jobs
from pyramid_scheduler import EnqueueError
from pyramid_scheduler.brokers.connection import make_connection, make_queue
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

pytestmark = [pytest.mark.integration]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_failing_job_is_recorded_and_the_daemon_goes_on(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    fail_id, later_id = tag("fail"), tag("later")
    proxy.add_async_job(jobs.fail, args=[harness.oracle, fail_id], id=fail_id)
    record = harness.wait_job(proxy, fail_id, {"failed"}, alive=(daemon,))
    assert record["runs"] == 1
    assert "RuntimeError: sampleapp job" in record["error"]
    assert f"{fail_id} fails on purpose" in record["error"]
    assert "Traceback (most recent call last)" in record["error"]
    assert record["result"] is None
    assert [run["pid"] for run in harness.runs(fail_id)] == [daemon.pid]

    proxy.add_async_job(jobs.record, args=[harness.oracle, later_id], id=later_id)
    assert harness.wait_job(proxy, later_id, {"done"}, alive=(daemon,))["runs"] == 1
    assert daemon.alive
    assert [row["type"] for row in harness.events(fail_id)] == ["job.created", "job.error", "job.removed"]
    assert f"job {fail_id} (queue jobs): run {fail_id}@" in daemon.log()


def _add_body(func: str, queue: str = "jobs") -> bytes:
    from datetime import datetime, timezone

    trigger = trigger_spec("now", timezone.utc, run_date=datetime.now(timezone.utc))
    return JobRequest(op="add", id=tag("raw"), queue=queue, func=func, args=["x", "y"], trigger=trigger).encode()


@pytest.mark.slow
def test_malformed_messages_are_dead_lettered_and_the_daemon_goes_on(harness):
    settings = parse_settings(harness.settings)
    assert settings.secret is not None
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)

    good_body = _add_body("integration.sampleapp.jobs:record")
    # (body, content type, signature or None for a right one, the reason expected)
    bad: list[tuple[bytes, str, str | None, str]] = [
        (b"{this is not json", "application/json", None, "body is not JSON"),
        (json.dumps({"v": 99, "op": "add"}).encode(), "application/json", None, "unknown wire format version 99"),
        (
            json.dumps({"v": 1, "op": "explode", "id": "x", "queue": "jobs", "mid": "m"}).encode(),
            "application/json",
            None,
            "unknown op 'explode'",
        ),
        (json.dumps([1, 2, 3]).encode(), "application/json", None, "body is a list, expected a JSON object"),
        (
            pickle.dumps({"v": 1}),
            "application/x-python-serialize",
            None,
            "content type 'application/x-python-serialize' is not application/json",
        ),
        (good_body, "application/json", "", "message is not signed"),
        (good_body, "application/json", "0" * 64, "bad message signature"),
        (_add_body("os:getpid"), "application/json", None, "module 'os' is not in scheduler.allowed_modules"),
        (
            _add_body("integration.sampleapp.jobs:no_such_job"),
            "application/json",
            None,
            "has no attribute 'no_such_job'",
        ),
        (
            _add_body("integration.sampleapp.jobs:record", queue="elsewhere"),
            "application/json",
            None,
            "queue 'elsewhere' is not one this daemon runs",
        ),
    ]
    kqueue = make_queue(settings, "jobs")
    with make_connection(settings) as conn:
        producer = conn.Producer()
        for body, content_type, signature, _ in bad:
            if signature is None:
                signature = sign_message(body, settings.secret, kqueue.routing_key, content_type)
            producer.publish(
                body,
                exchange="",
                routing_key=kqueue.routing_key,
                declare=[kqueue],
                content_type=content_type,
                content_encoding="utf-8",
                headers={SIGNATURE_HEADER: signature} if signature else {},
            )

    # A good job sent after them runs: the consumer is alive and past them.
    after_id = tag("after")
    proxy.add_async_job(jobs.record, args=[harness.oracle, after_id], id=after_id)
    harness.wait_job(proxy, after_id, {"done"}, alive=(daemon,))
    assert daemon.alive
    assert {run["tag"] for run in harness.runs()} == {after_id}

    url, prefix = settings.jobstore_url, settings.jobstore_tablename_prefix
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"select queue, reason, body from {prefix}dead_letters order by id")).all()
    finally:
        engine.dispose()
    assert len(rows) == len(bad), rows  # each once: rejected, not requeued
    for (queue, reason, body), (sent, _, _, expected) in zip(rows, bad, strict=True):
        assert queue == "jobs"
        assert expected in reason, (expected, reason)
        # Kept as text: undecodable bytes and NUL (which PostgreSQL refuses) escaped.
        assert body == sent.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    assert daemon.log().count("message refused and dead-lettered") == len(bad)
    # None of them is left on the broker.
    with make_connection(settings) as conn:
        assert kqueue(conn.default_channel).queue_declare(passive=True).message_count == 0
    # Nothing refused was stored as a job.
    assert [job["id"] for job in proxy.get_jobs()] == [after_id]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
@pytest.mark.parametrize("where", ["closed-port", "silent-server"])
def test_unreachable_broker_raises_enqueue_error_in_bounded_time(harness, scheme, where, request):
    port = 1 if where == "closed-port" else request.getfixturevalue("silent_port")
    url = f"redis://127.0.0.1:{port}/0" if scheme == "redis" else f"amqp://guest:guest@127.0.0.1:{port}//"
    proxy = harness.proxy(**{"scheduler.broker.url": url, "scheduler.broker.timeout": "1"})
    job_id = tag("lost")
    started = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    assert time.monotonic() - started < 15
    assert job_id in str(info.value)
    assert "guest:guest" not in str(info.value)  # the password is masked
    with pytest.raises(EnqueueError):
        proxy.cancel_job(job_id)
    assert time.monotonic() - started < 30
    assert proxy.get_job(job_id) is None


@pytest.mark.slow
def test_passwords_and_the_secret_never_reach_the_logs(make_harness):
    """Database and broker URLs are logged with the password masked, and the
    signing secret is never logged (PostgreSQL here trusts any password)."""
    from conftest import POSTGRES_URL

    password, secret = "pw-s3cret-9f1c", "signing-s3cret-77aa"
    url = POSTGRES_URL.replace("postgres@", f"postgres:{password}@")
    assert password in url
    harness = make_harness(store="postgresql", secret=secret, **{"broker.url": url, "jobstore.url": url})
    ini = harness.write_ini(harness.app_settings(**{"scheduler.broker.url": url}))
    proxy = harness.proxy()
    daemon = harness.start(ini=ini)
    ok_id, fail_id = tag("ok"), tag("fail")
    proxy.add_async_job(jobs.record, args=[harness.oracle, ok_id], id=ok_id)
    proxy.add_async_job(jobs.fail, args=[harness.oracle, fail_id], id=fail_id)
    harness.wait_job(proxy, ok_id, {"done"}, alive=(daemon,))
    harness.wait_job(proxy, fail_id, {"failed"}, alive=(daemon,))
    code, told = harness.run("--message", "print-jobs", ini=ini)
    assert code == 0, told
    assert daemon.terminate() == 0
    log = daemon.log() + told
    assert "postgres:***@127.0.0.1" in log  # the URLs are there, masked
    assert password not in log and secret not in log
    assert password not in repr(proxy.settings) and secret not in repr(proxy.settings)
