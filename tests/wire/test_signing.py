"""Signing (:mod:`pyramid_scheduler.wire.signing`): signatures that take any
header value, what the version 2 signature covers, and ``sent_at``."""

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import sent_too_long_ago, sign_message, verify

SECRET = b"0123456789abcdef0123456789abcdef"
QUEUE = "pyramid_scheduler.jobs"


def body_of():
    return JobRequest(op="cancel", id="j1", queue="jobs").encode()


@pytest.mark.parametrize(
    "header",
    [
        "é",
        "\udcff",
        "v2=é",
        "v2=" + "é" * 64,
        123,
        1.5,
        True,
        ["v2=00"],
        {"v2": "00"},
        b"v2=00",
        "",
        None,
        "x" * 10_000,
        "\x00" * 64,
    ],
)
def test_any_header_value_is_refused_without_an_error(header):
    with pytest.raises(InvalidMessage):
        verify(b"{}", header, SECRET, QUEUE)


def test_good_signatures_pass_and_recased_or_other_keys_do_not():
    body = body_of()
    good = sign_message(body, SECRET, QUEUE)
    assert good.startswith("v2=")
    verify(body, good, SECRET, QUEUE)
    body_only = hmac.new(SECRET, body, hashlib.sha256).hexdigest()  # version 1, pre-release builds
    with pytest.raises(InvalidMessage, match="version 1 signature"):
        verify(body, body_only, SECRET, QUEUE)
    for bad in (
        good.upper(),
        "V2=" + good[3:],
        good[:-1],
        sign_message(body, b"another-secret-0123456789", QUEUE),
        body_only.upper(),
        "v2=" + body_only,
    ):
        with pytest.raises(InvalidMessage, match="bad message signature"):
            verify(body, bad, SECRET, QUEUE)


def test_the_signature_covers_the_queue_the_content_type_and_encoding_and_the_body():
    body = body_of()
    good = sign_message(body, SECRET, QUEUE)
    for changed in (
        {"routing_key": "pyramid_scheduler.reports"},
        {"content_type": "text/plain"},
        {"content_encoding": "latin-1"},
    ):
        args = {"routing_key": QUEUE, "content_type": "application/json", "content_encoding": "utf-8", **changed}
        with pytest.raises(InvalidMessage, match="bad message signature"):
            verify(body, good, SECRET, **args)
    with pytest.raises(InvalidMessage, match="bad message signature"):
        verify(body.replace(b'"j1"', b'"j2"'), good, SECRET, QUEUE)
    # A newline in a property cannot move bytes between the properties and the body.
    assert sign_message(b"x", SECRET, "a\nb") != sign_message(b"b\nx", SECRET, "a")


def test_sent_at_older_than_the_limit_is_refused():
    now = datetime.now(timezone.utc)
    assert sent_too_long_ago(now.isoformat(), 3600) is None
    assert "max_message_age" in sent_too_long_ago((now - timedelta(hours=2)).isoformat(), 3600)
    assert sent_too_long_ago((now - timedelta(days=400)).isoformat(), 0) is None  # no limit
    assert "not an ISO 8601" in sent_too_long_ago("", 3600)
    assert "not an ISO 8601" in sent_too_long_ago("yesterday", 0)
    assert sent_too_long_ago("2026-01-01T00:00:00", 3600, now=datetime(2026, 1, 1, 0, 30, tzinfo=timezone.utc)) is None
