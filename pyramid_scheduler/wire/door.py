"""The door: what the daemon refuses before Kombu or the decoder reads it.

Between the broker and :meth:`pyramid_scheduler.daemon.consumer.JobConsumer.check`.
Our transports (:mod:`pyramid_scheduler.brokers.sql`,
:mod:`pyramid_scheduler.brokers.redis`) read each raw broker entry through
:func:`envelope`: an entry above :func:`entry_limit` is not parsed at all, and
one that is not a Kombu message is kept whole; either becomes a small
stand-in message (:func:`stand_in`) that the consumer dead-letters with the
reason the transport recorded. Kombu inflates a body with a ``compression``
header as it builds the message, before any check of ours (a few hundred
kilobytes of gzip inflate to gigabytes): :class:`DoorMessage` (our virtual
transports' message class) and :class:`DoorConsumer` (the daemon's and the
event subscriber's Kombu consumer, for AMQP) take the header off first, and
the message is refused; so is one Kombu cannot build. A
refused message carries its reason in :attr:`REFUSAL` (an attribute, not a
header, so a sender cannot set it) and reaches the consumer's callback like
any other, which dead-letters it: nothing raised here stops a consumer.
:func:`checked_body` is what both consumers check next, before decoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import kombu
import kombu.message
from kombu.transport import virtual

from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, verify

log = get_logger(__name__)

#: The only content type the daemon and the event subscriber read.
JSON = "application/json"
#: Content type given to a broker entry that is not a Kombu message (or is
#: not read at all), so that the consumer refuses it like any bad message.
NOT_A_MESSAGE = "application/x-not-a-kombu-message"
#: The attribute of a Kombu message refused at the door: why.
REFUSAL = "pyramid_scheduler_refusal"
#: Bytes of a refused entry kept (dead letters keep as much of a body).
PREFIX = 4096
#: What a Kombu envelope (properties, headers, base64) may add to a body.
ENVELOPE_SLACK = 16 * 1024
#: The only content encoding the door reads (Kombu's name for UTF-8 and Python's).
ENCODINGS = frozenset({"utf-8", "utf8", "UTF-8"})


def entry_limit(max_message_size: int) -> int:
    """The largest raw broker entry read: a body of ``max_message_size``
    bytes in base64, plus :data:`ENVELOPE_SLACK`."""
    return max_message_size * 4 // 3 + 4 + ENVELOPE_SLACK


def describe(data: bytes) -> str:
    """Size and SHA-256 of *data*, for reasons and logs."""
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"


def stand_in(raw: bytes, queue: str, reason: str, delivery_tag: str | None = None) -> dict[str, Any]:
    """A Kombu payload of type :data:`NOT_A_MESSAGE` standing in for the
    entry *raw*: its first :data:`PREFIX` bytes as body, and *reason* kept
    where only :class:`DoorConsumer` reads it."""
    return {
        "body": base64.b64encode(raw[:PREFIX]).decode("ascii"),
        "content-type": NOT_A_MESSAGE,
        "content-encoding": "binary",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": delivery_tag or uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": queue},
            REFUSAL: reason,
        },
    }


def envelope(raw: bytes | str, queue: str, limit: int, delivery_tag: str | None = None) -> dict[str, Any]:
    """The Kombu message in the broker entry *raw*, or a :func:`stand_in`:
    for an entry above *limit* bytes (not parsed), and for one that is not a
    Kombu message (written by something other than a Kombu producer).
    *delivery_tag* is the one the transport settles the entry by, if any."""
    if len(raw) > limit:  # a str's length in characters: no more than in bytes
        data = _bytes(raw)
        return stand_in(
            data,
            queue,
            f"broker entry of {describe(data)} is above the limit of {limit} "
            "bytes (scheduler.max_message_size in base64, and its envelope); "
            "not read",
            delivery_tag,
        )
    try:
        payload = json.loads(raw)
        properties = payload["properties"]
        tag = properties["delivery_tag"]
        if (
            isinstance(tag, str)
            and (delivery_tag is None or tag == delivery_tag)
            and isinstance(properties.get("delivery_info"), dict)
            and isinstance(payload.get("headers") or {}, dict)
            and isinstance(payload.get("content-type"), str)
            and isinstance(payload.get("body", ""), str)
            and properties.get("body_encoding") in (None, "base64")
            and REFUSAL not in properties
        ):
            return payload  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001, S110 - any shape that is not an envelope
        pass
    data = _bytes(raw)
    return stand_in(data, queue, f"broker entry of {describe(data)} is not a Kombu message", delivery_tag)


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw


def _without_compression(headers: Any) -> tuple[Any, str | None]:
    """*headers* without a ``compression`` header, and why that refuses the
    message (None: there was none)."""
    if not isinstance(headers, dict) or "compression" not in headers:
        return headers, None
    reason = f"compressed message ({str(headers['compression'])[:80]!r}): refused, not inflated"
    return {key: value for key, value in headers.items() if key != "compression"}, reason


class DoorMessage(virtual.Message):  # type: ignore[misc]
    """The message class of our virtual transports' channels, which build
    each message as it is delivered (before the consumer sees it): a
    ``compression`` header is taken off rather than the body inflated, and a
    payload Kombu cannot read (bad base64, a broken envelope) becomes a
    :func:`stand_in`; either is refused (:data:`REFUSAL`)."""

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        headers, refusal = _without_compression(payload.get("headers"))
        if refusal is not None:
            payload = {**payload, "headers": headers}
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:  # noqa: BLE001 - refused, whatever Kombu could not read
            properties = payload.get("properties")
            properties = properties if isinstance(properties, dict) else {}
            tag, info = properties.get("delivery_tag"), properties.get("delivery_info")
            queue = info.get("routing_key", "?") if isinstance(info, dict) else "?"
            payload = stand_in(
                _dump(payload),
                str(queue),
                f"Kombu could not read the message ({type(exc).__name__}: {exc})"[:500],
                tag if isinstance(tag, str) else None,
            )
            super().__init__(payload, channel=channel, **kwargs)
        refusal = refusal or self.properties.get(REFUSAL)
        if refusal is not None:
            setattr(self, REFUSAL, str(refusal))


def _dump(payload: Any) -> bytes:
    try:
        return json.dumps(payload).encode("utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - whatever it holds
        return repr(payload).encode("utf-8", "surrogateescape")


class DoorConsumer(kombu.Consumer):  # type: ignore[misc]
    """The Kombu consumer of the daemon and of the event subscriber, on every
    transport: each message reaches ``on_message`` (which must be given), and
    is marked refused (:data:`REFUSAL`), never raised or inflated, when

    * it has a ``compression`` header (on AMQP the header is taken off here,
      before Kombu builds the message and would inflate the body; our virtual
      transports build it with :class:`DoorMessage`);
    * Kombu recorded an error building it;
    * its content encoding is not UTF-8.

    Costs two dictionary lookups per message.
    """

    def revive(self, channel: Any) -> None:
        super().revive(channel)
        # A virtual transport of Kombu's (Sentinel, memory) builds messages
        # with its own class: have it build them with ours.
        channel = self.channel
        if isinstance(channel, virtual.Channel) and not issubclass(channel.Message, DoorMessage):
            channel.Message = DoorMessage

    def _receive_callback(self, raw: Any) -> Any:
        refusal = None
        if not isinstance(raw, kombu.message.Message):  # py-amqp's: built here
            properties = raw.properties
            headers, refusal = _without_compression(properties.get("application_headers"))
            if refusal is not None:
                properties["application_headers"] = headers
        message = self.channel.message_to_python(raw)  # type: ignore[union-attr]
        if refusal is None:
            refusal = getattr(message, REFUSAL, None)
            if refusal is None:
                if message.errors:
                    refusal = f"Kombu could not read the message: {message.errors[0][1]!r}"[:500]
                elif message.content_encoding not in ENCODINGS and message.content_type != NOT_A_MESSAGE:
                    refusal = f"content encoding {str(message.content_encoding)[:80]!r} is not utf-8"
        if refusal is not None:
            setattr(message, REFUSAL, refusal)
        message.errors = []
        if self.accept is not None:
            message.accept = self.accept
        return self.on_message(message)  # type: ignore[misc]


def refusal_of(message: Any) -> str | None:
    """Why the door refused *message* (see :class:`DoorConsumer`), or None."""
    return getattr(message, REFUSAL, None)


def checked_body(message: Any, max_size: int, secret: bytes | None, signed_to: str | None = None) -> bytes:
    """The body of *message* once it passed the checks both the daemon and
    the event subscriber make before decoding anything, cheapest first: not
    refused by the door (:func:`refusal_of`), of content type :data:`JSON`,
    at most *max_size* bytes (``scheduler.max_message_size``), and, with a
    *secret*, signed for *signed_to* (the exchange; default: the message's
    routing key, the broker queue).

    :raises InvalidMessage: naming the first check it fails.
    """
    refusal = refusal_of(message)
    if refusal is not None:
        raise InvalidMessage(refusal)
    if message.content_type != JSON:
        raise InvalidMessage(f"content type {str(message.content_type)[:80]!r} is not {JSON}")
    body = message.body
    if isinstance(body, str):  # py-amqp decodes bodies that declare an encoding
        if len(body) > max_size:  # characters: no more than bytes
            raise InvalidMessage(f"body of {len(body)} characters is above scheduler.max_message_size")
        body = body.encode("utf-8", "surrogateescape")
    if not isinstance(body, bytes):
        raise InvalidMessage(f"body is a {type(body).__name__}")
    if len(body) > max_size:
        raise InvalidMessage(f"body of {len(body)} bytes is above scheduler.max_message_size")
    if secret is not None:
        if signed_to is None:
            signed_to = message.delivery_info.get("routing_key") or ""
        headers = message.headers or {}
        verify(body, headers.get(SIGNATURE_HEADER), secret, signed_to, message.content_type, message.content_encoding)
    return body


def kept_for_replay(message: Any, max_size: int, secret: bytes | None) -> tuple[str | None, bool | None]:
    """What a dead letter keeps of a refused *message* to replay it later:
    its whole body as text when the door and :func:`checked_body`'s
    checks before the signature pass (not refused by the door, JSON, at
    most *max_size* bytes, UTF-8; without a valid signature of *secret*, at
    most :data:`PREFIX` bytes), else None; and whether it was signed with
    *secret* (None: no secret is set, or no body is kept)."""
    try:
        body = checked_body(message, max_size, None)
        text = body.decode("utf-8")
    except (InvalidMessage, UnicodeDecodeError):
        return None, None
    if secret is None:
        return text, None
    try:
        checked_body(message, max_size, secret)
    except InvalidMessage:
        # Anyone who can write to the broker can send these: no more of them
        # is kept than of any refused entry (PREFIX bytes), to look at or,
        # with force, to replay.
        return (text, False) if len(body) <= PREFIX else (None, False)
    return text, True
