"""Signed messages, the module allowlist and the restricted job unpickler,
through a real consumer on the SQL broker."""

import json
import logging
import os
import pickle
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from conftest import make_settings, wait_for
from pyramid_scheduler import InvalidJob
from pyramid_scheduler.brokers.connection import make_connection, make_queue
from pyramid_scheduler.daemon.service import SchedulerService
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

SECRET = "0123456789abcdef0123456789abcdef"
RAN = []


def harmless(tag):
    RAN.append(tag)


@pytest.fixture
def running(tmp_var):
    services = []

    def start(**extra):
        settings = make_settings(tmp_var, **extra)
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
        proxy = config.registry.scheduler
        service = SchedulerService(proxy)
        service.start_thread()
        assert service.started.wait(10)
        services.append(service)
        return proxy, service

    RAN.clear()
    yield start
    for service in services:
        service.stop()
        service.join(10)
        service.proxy.close()


def publish_raw(proxy, body: bytes, headers=None, content_type="application/json"):
    with make_connection(proxy.settings) as conn:
        queue = make_queue(proxy.settings, proxy.settings.default_queue)
        with conn.Producer() as producer:
            producer.publish(
                body,
                routing_key=queue.routing_key,
                exchange="",
                declare=[queue],
                content_type=content_type,
                content_encoding="utf-8",
                headers=headers or {},
            )


def dead_letters(service):
    ledger = service.engine.ledger
    with ledger.engine.connect() as conn:
        return [row.reason for row in conn.execute(sa.select(ledger.dead_letters.c.reason))]


def request_body(func="test_security:harmless", job_id="raw1"):
    now = datetime.now(timezone.utc)
    return JobRequest(
        op="add",
        id=job_id,
        queue="jobs",
        func=func,
        args=[job_id],
        trigger=trigger_spec("now", timezone.utc, run_date=now),
    ).encode()


def test_signed_jobs_run_and_unsigned_or_forged_ones_are_dead_lettered(running):
    proxy, service = running(secret=SECRET)
    publish_raw(proxy, request_body(job_id="unsigned"))
    key = make_queue(proxy.settings, "jobs").routing_key
    publish_raw(proxy, request_body(job_id="forged"), {SIGNATURE_HEADER: sign_message(b"other", SECRET.encode(), key)})
    body = request_body(job_id="hand-signed")
    publish_raw(proxy, body, {SIGNATURE_HEADER: sign_message(body, SECRET.encode(), key)})
    proxy.add_async_job(harmless, args=["via-proxy"])
    wait_for(lambda: "via-proxy" in RAN and "hand-signed" in RAN)
    wait_for(lambda: len(dead_letters(service)) == 2)
    assert sorted(RAN) == ["hand-signed", "via-proxy"]
    reasons = dead_letters(service)
    assert any("not signed" in r for r in reasons) and any("bad message signature" in r for r in reasons)


def test_allowed_modules_checked_at_add_time_and_at_the_door(running):
    proxy, service = running(allowed_modules="test_security")
    with pytest.raises(InvalidJob, match="allowed_modules"):
        proxy.add_async_job(os.getcwd)
    publish_raw(proxy, request_body(func="os:getcwd", job_id="sneaky"))
    proxy.add_async_job(harmless, args=["fine"])
    wait_for(lambda: "fine" in RAN and dead_letters(service))
    assert "not in scheduler.allowed_modules" in dead_letters(service)[0]


def test_malformed_messages_never_stop_the_consumer(running):
    proxy, service = running()
    publish_raw(proxy, b"\x80\x04K\x01.", content_type="application/x-python-serialize")  # a pickle
    publish_raw(proxy, b"not json at all")
    publish_raw(proxy, json.dumps({"v": 9}).encode())
    publish_raw(
        proxy,
        request_body(func="json:dumps", job_id="badargs").replace(b'"args":["badargs"]', b'"args":[1,2,3,4,5,6,7]'),
    )
    proxy.add_async_job(harmless, args=["after"])
    wait_for(lambda: "after" in RAN and len(dead_letters(service)) == 4)
    reasons = " | ".join(dead_letters(service))
    assert "content type 'application/x-python-serialize'" in reasons
    assert "not JSON" in reasons and "version" in reasons and "json:dumps" in reasons


def test_stored_pickle_cannot_run_code(running, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    proxy, service = running()
    store = service.engine.stores["jobs"]
    with store.engine.begin() as conn:
        conn.execute(store.jobs_t.insert().values(id="evil", next_run_time=0.0, job_state=pickle.dumps(Evil())))
    service.engine.aps.wakeup()
    wait_for(lambda: _next_run_time(store, "evil") is None)
    assert not marker.exists()


def _next_run_time(store, job_id):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(store.jobs_t.c.next_run_time).where(store.jobs_t.c.id == job_id)).scalar_one()


def test_short_secret_is_refused(tmp_var):
    config = Configurator(settings={"scheduler.secret": "short"})
    config.include("pyramid_scheduler")
    with pytest.raises(ConfigurationError, match="scheduler.secret"):
        config.commit()


def test_missing_secret_is_warned_at_start(running, caplog):
    with caplog.at_level(logging.WARNING, logger="pyramid_scheduler"):
        running()
    assert "scheduler.secret is not set" in caplog.text


def test_secrets_are_not_logged(running, caplog):
    with caplog.at_level(logging.DEBUG):
        proxy, _ = running(secret=SECRET)
        proxy.add_async_job(harmless, args=["x"])
        wait_for(lambda: "x" in RAN)
    assert SECRET not in caplog.text
