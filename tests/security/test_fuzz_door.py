"""A hypothesis fuzzer of raw broker entries against the door.

An in-process consumer (:class:`~pyramid_scheduler.daemon.service.SchedulerService`,
with a secret and an allowlist) runs on the real transport: our SQL transport
on SQLite, and Redis. Each example writes raw entries straight into the
broker's storage (rows of the messages table, items of the Redis list):
random bytes, and Kombu envelopes whose every part may be odd (headers of
any type, signatures good or bad, compression, content
types and encodings, body encodings, delivery tags and routing keys). Then
a legitimate job is sent behind them. It must run; the consumer must still
be running; no check may have failed with an unexpected error (the door
catches those, but logs them: each is a bug); and the only job functions
called are those of validly signed requests.

``HYPOTHESIS_EXAMPLES`` (default 150) scales the examples (a fifth of it here).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator

from conftest import REDIS_URL, make_settings, require_service, wait_for
from pyramid_scheduler.brokers.connection import make_queue
from pyramid_scheduler.brokers.sql import engine_for
from pyramid_scheduler.brokers.sql import messages as messages_table
from pyramid_scheduler.daemon.service import SchedulerService
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

pytestmark = [pytest.mark.integration]

SECRET = "fuzz-secret-0123456789abcdef0123"
EXAMPLES = max(10, int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")) // 5)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALLED: list[str] = []
LOCK = threading.Lock()


def spy(tag: str) -> None:
    with LOCK:
        CALLED.append(tag)


class Unexpected(logging.Handler):
    """Collects the door's "unexpected error" records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected error" in record.getMessage():
            self.records.append(record)


class Door:
    def __init__(self, tmp: Any, broker: str) -> None:
        var = tmp / "var"
        var.mkdir()
        app = make_settings(var, broker, secret=SECRET, allowed_modules="security.test_fuzz_door")
        with Configurator(settings=app) as config:
            config.include("pyramid_scheduler")
        self.proxy = config.registry.scheduler
        self.settings = self.proxy.settings
        self.queue = make_queue(self.settings, "jobs").name
        self.service = SchedulerService(self.proxy)
        self.thread = self.service.start_thread()
        assert self.service.started.wait(20)
        self.signed: set[str] = set()
        if broker == "redis":
            import redis

            self.redis = redis.Redis.from_url(REDIS_URL)
        else:
            self.sql = engine_for(self.settings.broker.url)  # the transport's own: tables made

    def write(self, entries: list[bytes]) -> None:
        if hasattr(self, "redis"):
            for raw in entries:
                self.redis.lpush(self.queue, raw)
            return
        with self.sql.begin() as conn:
            for raw in entries:
                conn.execute(
                    messages_table.insert().values(
                        queue=self.queue,
                        delivery_tag=uuid.uuid4().hex,
                        visible_at=0.0,
                        payload=raw.decode("utf-8", "replace"),
                    )
                )

    def close(self) -> None:
        self.service.stop()
        self.service.join(20)
        self.proxy.close()
        if hasattr(self, "redis"):
            owner = self.service.engine.owner
            self.redis.delete(self.queue, f"{self.queue}:processing", f"{self.queue}:processing:{owner}")
            self.redis.close()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def door(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    if request.param == "redis":
        require_service("redis")
    handler = Unexpected()
    logging.getLogger("pyramid_scheduler").addHandler(handler)
    door = Door(tmp_path_factory.mktemp(f"fuzz-{request.param}"), request.param)
    door.unexpected = handler  # type: ignore[attr-defined]
    try:
        yield door
    finally:
        logging.getLogger("pyramid_scheduler").removeHandler(handler)
        door.close()


# -- what is written ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@st.composite
def bodies(draw: Any) -> tuple[bytes, str, str]:
    """A body, the tag the spy would record if it ran, and its kind."""
    tag = f"fz-{uuid.uuid4().hex[:10]}"
    kind = draw(st.sampled_from(["job", "job-field", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), tag, kind
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), tag, kind
    wire = JobRequest(
        op="add",
        id=tag,
        queue="jobs",
        func="security.test_fuzz_door:spy",
        args=[tag],
        trigger=trigger_spec("now", timezone.utc, run_date=datetime.now(timezone.utc)),
    ).to_wire()
    if kind == "job-field":
        # Not "args": a signed request may pass the spy anything.
        wire[draw(st.sampled_from(sorted(set(wire) - {"args"})))] = draw(json_values)
    return json.dumps(wire).encode(), tag, kind


@st.composite
def entries(draw: Any, door: Door) -> bytes:
    """One raw broker entry."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    body, tag, kind = draw(bodies())
    secret = door.settings.secret
    content_type = draw(st.sampled_from(["application/json", "application/json", "text/plain", ""]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "binary", "latin-1", None]))
    good = [sign_message(body, secret, door.queue, content_type, str(encoding))]
    signature = draw(st.one_of(st.sampled_from(good), json_values, st.just("é")))
    if signature in good and kind.startswith("job"):
        door.signed.add(tag)  # may run: everything else must not
    headers: dict[str, Any] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    headers[SIGNATURE_HEADER] = signature
    if draw(st.booleans()) and draw(st.booleans()):
        headers["compression"] = draw(st.sampled_from(["application/x-gzip", "zlib", "bogus", 5]))
    body_encoding = draw(st.sampled_from(["base64", "base64", None, "bogus"]))
    payload: dict[str, Any] = {
        "body": base64.b64encode(body).decode() if body_encoding == "base64" else body.decode("utf-8", "replace"),
        "content-type": content_type,
        "content-encoding": encoding,
        "headers": headers,
        "properties": {
            "body_encoding": body_encoding,
            "delivery_tag": uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": door.queue},
        },
    }
    for _ in range(draw(st.integers(0, 2))):  # and then break something
        targets = [payload]
        if isinstance(payload.get("properties"), dict):
            targets.append(payload["properties"])
            if isinstance(payload["properties"].get("delivery_info"), dict):
                targets.append(payload["properties"]["delivery_info"])
        target = draw(st.sampled_from(targets))
        if not target:
            continue
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    raw = json.dumps(payload).encode()
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=5))
    return raw


@FUZZ
@given(data=st.data())
def test_no_raw_entry_gets_past_the_door_or_stops_it(door, data):
    sent = data.draw(st.lists(entries(door), min_size=1, max_size=4), label="entries")
    door.write(sent)
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    door.proxy.add_async_job(spy, args=[sentinel])
    wait_for(lambda: sentinel in CALLED, timeout=20)
    assert door.thread.is_alive()
    assert door.unexpected.records == [], door.unexpected.records[0].getMessage()
    with LOCK:
        called = set(CALLED)
    assert called <= door.signed | {tag for tag in called if tag.startswith("sentinel-")}
