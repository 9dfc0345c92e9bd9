"""Signing: the HMAC that proves a message came from a holder of ``scheduler.secret``.

Every producer (:class:`~pyramid_scheduler.brokers.connection.Publisher` for
job requests, :class:`~pyramid_scheduler.brokers.fanout.EventPublisher` for
job events) puts :func:`sign_message`'s value in the :data:`SIGNATURE_HEADER`
of what it sends when a secret is set; every reader (the daemon's door,
:class:`~pyramid_scheduler.brokers.fanout.EventSubscriber`) checks it with
:func:`verify` before decoding anything (through
:func:`pyramid_scheduler.wire.door.checked_body`), and refuses a signed job
request sent too long ago (:func:`sent_too_long_ago`) as a possible replay.
See ``docs/security.rst``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler.exceptions import InvalidMessage

#: The Kombu message header that carries the message's signature
#: (:func:`sign_message`).
SIGNATURE_HEADER = "x-pyramid-scheduler-signature"
#: The signature scheme producers use: HMAC-SHA256 of the body and of the
#: message properties the daemon reads (:func:`signed_text`).
SIGNATURE_SCHEME = "v2"
#: The body-only signature of pre-release builds (refused with its own reason).
_V1_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def signed_text(body: bytes, routing_key: str, content_type: str, content_encoding: str) -> bytes:
    """What a version 2 signature covers: a first line naming the scheme and
    holding, as a JSON array, the message properties the daemon reads (its
    content type and encoding, and the broker queue or exchange it was sent
    to), then the body. JSON escapes newlines, so the first line ends at the
    first newline whatever the properties hold."""
    return _signed_head(str(routing_key), str(content_type), str(content_encoding)) + body


@functools.lru_cache(maxsize=256)
def _signed_head(routing_key: str, content_type: str, content_encoding: str) -> bytes:
    head = json.dumps(
        [SIGNATURE_SCHEME, content_type, content_encoding, routing_key], ensure_ascii=True, separators=(",", ":")
    )
    return head.encode("ascii") + b"\n"


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with *secret*, copied for each message (keying
    one anew costs more than the hashing of a small message)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def sign_message(
    body: bytes,
    secret: bytes,
    routing_key: str,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
) -> str:
    """The value of :data:`SIGNATURE_HEADER` for a message: ``v2=`` and the
    HMAC-SHA256 (hex) of :func:`signed_text`."""
    mac = _keyed(secret).copy()
    mac.update(_signed_head(str(routing_key), str(content_type), str(content_encoding)))
    mac.update(body)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def signature_headers(body: bytes, secret: bytes | None, routing_key: str) -> dict[str, str] | None:
    """The headers that sign *body* for *routing_key* (the broker queue or
    exchange it is sent to), or None without a *secret*."""
    return {SIGNATURE_HEADER: sign_message(body, secret, routing_key)} if secret else None


def verify(
    body: bytes,
    signature: Any,
    secret: bytes,
    routing_key: str,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
) -> None:
    """Check the *signature* header of a message; any value is taken (a
    number, a list, non-ASCII text): anything but a good signature is refused.

    :raises InvalidMessage: the signature is missing or wrong.
    """
    if not isinstance(signature, str) or not signature:
        raise InvalidMessage("message is not signed, and scheduler.secret is set")
    if not signature.startswith(SIGNATURE_SCHEME + "="):
        if _V1_SIGNATURE.fullmatch(signature):
            raise InvalidMessage(
                "bad message signature: a version 1 signature (of the body only, "
                "from a pre-release build), which this daemon refuses: upgrade the producer"
            )
        raise InvalidMessage("bad message signature (is scheduler.secret the same on both ends?)")
    expected = sign_message(body, secret, routing_key, content_type, content_encoding)
    # Compared as bytes: hmac.compare_digest refuses str holding non-ASCII.
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "surrogatepass")):
        raise InvalidMessage("bad message signature (is scheduler.secret the same on both ends?)")


def sent_too_long_ago(sent_at: str, max_age: float, now: datetime | None = None) -> str | None:
    """Why a message sent at *sent_at* (ISO 8601) is refused as a possible
    replay, or None: it is older than *max_age* seconds (0: no limit), or its
    time cannot be read."""
    try:
        when = datetime.fromisoformat(sent_at)
    except (TypeError, ValueError):
        return f"sent_at {sent_at[:40]!r} is not an ISO 8601 time (signed messages must carry one)"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if not max_age:
        return None
    age = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if age > max_age:
        return (
            f"sent {age:.0f}s ago ({sent_at}), more than scheduler.max_message_age "
            f"({max_age:g}s): refused as a possible replay"
        )
    return None
