"""The door's parts, in process and fast: raw broker entries, the checks
before decoding, dead letters, and events. The signature's own tests are in
:mod:`wire.test_signing`, the nesting limit in :mod:`wire.test_messages`, the
bounded cron search in :mod:`triggers.test_build`.

The same attacks against a real daemon on every broker are in
:mod:`security.test_door_daemons`."""

import base64
import gzip
import hashlib
import json

import kombu
import pytest
import sqlalchemy as sa
from wire.test_messages import body_of

from pyramid_scheduler.brokers.fanout import decode_event
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.deadletters import DEAD_LETTER_PREFIX
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.wire.door import NOT_A_MESSAGE, REFUSAL, DoorMessage, checked_body, entry_limit, envelope
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

SECRET = b"0123456789abcdef0123456789abcdef"
QUEUE = "pyramid_scheduler.jobs"


# -- the signature ----------------------------------------------------------------------


# -- the body ---------------------------------------------------------------------------


# -- raw broker entries -----------------------------------------------------------------


def kombu_payload(body=b"{}", headers=None, **extra):
    payload = {
        "body": base64.b64encode(body).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers or {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": "t1",
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
        },
    }
    payload.update(extra)
    return payload


def test_an_entry_above_the_limit_is_not_parsed():
    limit = entry_limit(1024)
    raw = json.dumps(kombu_payload(b"x" * 32768)).encode()
    payload = envelope(raw, QUEUE, limit)
    assert payload["content-type"] == NOT_A_MESSAGE
    reason = payload["properties"][REFUSAL]
    assert f"{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}" in reason
    assert len(base64.b64decode(payload["body"])) == 4096  # a prefix, not the entry


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff",
        b"[]",
        b"{}",
        b'{"properties": 1}',
        b'{"properties": {"delivery_tag": 5}}',
        json.dumps({**kombu_payload(), "content-type": 7}).encode(),
        json.dumps(kombu_payload(properties={"delivery_tag": "t", "delivery_info": {}, REFUSAL: "x"})).encode(),
    ],
)
def test_an_entry_that_is_not_a_kombu_message_becomes_a_stand_in(raw):
    payload = envelope(raw, QUEUE, entry_limit(1024), delivery_tag="row-7")
    assert payload["content-type"] == NOT_A_MESSAGE
    assert payload["properties"]["delivery_tag"] == "row-7"  # settled as the entry it stands for


class FakeChannel:
    def decode_body(self, body, encoding):
        return base64.b64decode(body) if encoding == "base64" else body


def test_a_compressed_message_is_refused_without_inflating():
    bomb = gzip.compress(b"\x00" * (8 << 20))
    message = DoorMessage(kombu_payload(bomb, {"compression": "application/x-gzip", "x": 1}), channel=FakeChannel())
    assert message.body == bomb  # as received
    assert "compressed message" in getattr(message, REFUSAL)
    assert message.headers == {"x": 1}


def test_a_payload_kombu_cannot_read_is_refused_not_raised():
    payload = kombu_payload()
    payload["body"] = "not base64!"
    message = DoorMessage(payload, channel=FakeChannel())
    assert "Kombu could not read" in getattr(message, REFUSAL)


# -- dead letters ------------------------------------------------------------------------


def test_dead_letters_keep_a_prefix_size_and_digest_and_are_capped(tmp_path):
    ledger = Ledger(create_db_engine(f"sqlite:///{tmp_path}/jobs.sqlite"), "t_")
    big = b"\x00" + bytes(range(256)) * 100
    ledger.dead_letter_many([("jobs", "reason \x00 \udcff", big), ("jobs\x00", "r", "text é")])
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.dead_letters).order_by(ledger.dead_letters.c.id)).all()
    assert rows[0].size == len(big) and rows[0].sha256 == hashlib.sha256(big).hexdigest()
    assert rows[0].body.startswith("\\x00") and "\x00" not in rows[0].body and "\x00" not in rows[0].reason
    assert len(rows[0].body.encode()) <= 4 * DEAD_LETTER_PREFIX
    assert rows[1].size == len("text é".encode())
    dropped = ledger.dead_letter_many([("jobs", f"r{i}", b"x") for i in range(10)], keep=5)
    assert dropped == 7 and ledger.dead_letters_dropped == 7
    with ledger.engine.connect() as conn:
        reasons = conn.execute(sa.select(ledger.dead_letters.c.reason).order_by(ledger.dead_letters.c.id)).scalars()
        assert list(reasons) == [f"r{i}" for i in range(5, 10)]  # the oldest dropped


# -- events ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields", [{"type": "x"}, {"seq": "x"}, {"scheduled_run_time": "not a time"}, {"job_id": 1, "type": None}]
)
def test_an_event_with_odd_fields_is_refused_or_read_never_raised(fields):
    body = json.dumps(
        {"v": 1, "type": "job.executed", "job_id": "j", "seq": 1, "origin": "o", "event": {"job_id": "j", **fields}}
    ).encode()
    try:
        event, _ = decode_event(body)
    except InvalidMessage:
        return
    assert event.type == "job.executed"


# -- the checks before decoding, shared by the daemon and the event subscriber ----------


def kombu_message(body=b"{}", content_type="application/json", headers=None, routing_key=QUEUE):
    return kombu.Message(
        body=body,
        content_type=content_type,
        content_encoding="utf-8",
        headers=headers or {},
        delivery_info={"exchange": "", "routing_key": routing_key},
    )


def test_checked_body_refuses_before_anything_is_decoded():
    body = body_of()
    signed = {SIGNATURE_HEADER: sign_message(body, SECRET, QUEUE)}
    assert checked_body(kombu_message(body, headers=signed), 10_000, SECRET) == body
    assert checked_body(kombu_message(body.decode()), 10_000, None) == body  # py-amqp's decoded str
    exchange = {SIGNATURE_HEADER: sign_message(body, SECRET, "pyramid_scheduler.events")}
    assert checked_body(kombu_message(body, headers=exchange), 10_000, SECRET, "pyramid_scheduler.events") == body
    refused = kombu_message(body, headers=signed)
    setattr(refused, REFUSAL, "compressed message")
    for message, size, fragment in (
        (refused, 10_000, "compressed message"),
        (kombu_message(body, "application/x-python-serialize", signed), 10_000, "content type"),
        (kombu_message(body, headers=signed), 10, f"body of {len(body)} bytes is above"),
        (kombu_message("é" * 20, headers=signed), 10, "body of 20 characters is above"),
        (kombu_message(body), 10_000, "not signed"),
        (kombu_message(body, headers=signed, routing_key="pyramid_scheduler.reports"), 10_000, "bad message signature"),
        (kombu_message(body, headers=exchange), 10_000, "bad message signature"),
    ):
        with pytest.raises(InvalidMessage, match=fragment):
            checked_body(message, size, SECRET)
