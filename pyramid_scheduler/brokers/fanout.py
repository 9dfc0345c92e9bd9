"""Fan-out: the daemons' job events, delivered in every process that asks.

In a process that runs jobs (``pscheduler`` or combined mode) the event
dispatcher hands each job event, before the local listeners, to
:class:`EventPublisher`. It numbers the event (``seq``, per job id, counted
in the job store's database so a restart does not reset it) and publishes
it as JSON on the fan-out exchange ``<scheduler.broker.queue_prefix>events``.
A web process with ``scheduler.events.subscribe = true`` runs an
:class:`EventSubscriber` thread: its own exclusive, auto-deleted queue bound
to that exchange, whose events go to the process's ``add_listener``
listeners and ``registry.notify`` subscribers, one at a time, in order per
job. Kombu's Redis transport (PUBLISH/SUBSCRIBE) and RabbitMQ carry it; the
SQL broker has no fan-out, so ``scheduler.events.subscribe`` is refused
there (see :mod:`pyramid_scheduler.settings`).

Delivery is at most once: a process that is not connected when an event is
published does not receive it later (the job records are the durable state).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import kombu
import sqlalchemy as sa

from pyramid_scheduler.api import Event
from pyramid_scheduler.brokers.connection import JSON, StoppableConsumer, make_connection, retry_until
from pyramid_scheduler.events import EventDispatcher
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.wire.door import DoorConsumer, checked_body
from pyramid_scheduler.wire.signing import signature_headers

log = get_logger(__name__)

VERSION = 1
#: Seconds the publisher stops trying after the broker or the job store failed.
PAUSE = 5.0
#: Seconds the event subscriber waits before starting again after a failure.
RESTART_PAUSE = 1.0
#: Event fields holding times (sent as ISO 8601, read back as datetimes).
TIME_FIELDS = ("scheduled_run_time", "next_run_time")


def events_exchange(settings: SchedulerSettings) -> kombu.Exchange:
    """The fan-out exchange job events are published on."""
    return kombu.Exchange(
        f"{settings.broker_queue_prefix}events", type="fanout", durable=False, delivery_mode="transient"
    )


def origin_of(proxy: Any) -> str:
    """A token naming *proxy*'s process, so it can skip its own events."""
    token = getattr(proxy, "_event_origin", None)
    if token is None:
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        proxy._event_origin = token
    return str(token)


# -- the message ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def encode_event(event: Event, seq: int | None, origin: str) -> bytes:
    """One event as JSON: the event's fields, ``exception`` as its text."""
    fields = {}
    for key, value in event.items():
        if key == "type":
            continue
        if key == "exception":
            fields["exception"] = f"{type(value).__name__}: {value}"
            continue
        fields[key] = _plain(value)
    body = {
        "v": VERSION,
        "type": event.type,
        "job_id": event.get("job_id"),
        "seq": seq,
        "origin": origin,
        "sent_at": datetime.now(timezone.utc).isoformat(),
        "event": fields,
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_event(body: bytes | str) -> tuple[Event, str]:
    """The :class:`Event` (with ``seq``) and the origin of an event message.

    :raises InvalidMessage: the body is not a version 1 event.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"event body is not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise InvalidMessage(f"unknown event format {str(data)[:80]!r}")
    kind, fields = data.get("type"), data.get("event")
    if kind not in Event.TYPES or not isinstance(fields, dict):
        raise InvalidMessage(f"unknown event type {kind!r}")
    # "type" is the event's own (Event's first argument); "seq" is set below.
    fields = {key: value for key, value in fields.items() if key not in ("type", "seq")}
    for key in TIME_FIELDS:
        if isinstance(fields.get(key), str):
            try:
                fields[key] = datetime.fromisoformat(fields[key])
            except ValueError as exc:
                raise InvalidMessage(f"event field {key!r}: {exc}") from exc
    try:
        event = Event(kind, **fields)
    except TypeError as exc:
        raise InvalidMessage(f"event fields refused: {exc}") from exc
    seq = data.get("seq")
    event.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    return event, str(data.get("origin"))


# -- the daemon's side ----------------------------------------------------------------


class EventPublisher:
    """Numbers and publishes the job events of the process that runs jobs.

    Called from the event dispatcher's thread, before the local listeners
    (which then see ``seq`` too).
    A publish that fails within ``scheduler.broker.timeout`` is logged and
    the event dropped for the other processes, and publishing pauses for a
    few seconds, so that an unreachable broker delays the local listeners by
    one timeout, not one per event. Dropped events keep their number: a gap
    in ``seq`` tells a subscriber it missed some.
    """

    def __init__(self, settings: SchedulerSettings, ledger: Any, origin: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.origin = origin
        self.exchange = events_exchange(settings)
        self._connection: kombu.Connection | None = None
        self._producer: kombu.Producer | None = None
        self._broker_paused_until = 0.0
        self._store_paused_until = 0.0
        self._dropped = 0

    def __call__(self, event: Event) -> None:
        job_id = event.get("job_id")
        if not job_id:
            return
        event.seq = seq = self._next_seq(job_id, event)
        if time.monotonic() < self._broker_paused_until:
            self._dropped += 1
            return
        body = encode_event(event, seq, self.origin)
        timeout = self.settings.broker_timeout
        deadline = time.monotonic() + timeout
        try:
            if self._producer is None:
                self._connection = make_connection(self.settings)
                self._producer = kombu.Producer(self._connection)
            self._producer.publish(
                body,
                exchange=self.exchange,
                routing_key="",
                declare=[self.exchange],
                content_type=JSON,
                content_encoding="utf-8",
                headers=signature_headers(body, self.settings.secret, self.exchange.name),
                retry=True,
                retry_policy=retry_until(deadline),
                timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - the fan-out must not stop the dispatcher
            # One wait per pause, not one per event: local listeners wait behind this.
            self._broker_paused_until = time.monotonic() + max(PAUSE, timeout)
            self._dropped += 1
            log.warning(
                "job %s: event %s (seq %s) not published to other processes: %s; "
                "events are not published for the next %gs",
                job_id,
                event.type,
                seq,
                exc,
                max(PAUSE, timeout),
            )
            self.close()
            return
        if self._dropped:
            log.warning(
                "%d job event(s) were not published to other processes while the broker "
                "was unreachable (their seq numbers are missing there)",
                self._dropped,
            )
            self._dropped = 0

    def _next_seq(self, job_id: str, event: Event) -> int | None:
        if time.monotonic() < self._store_paused_until:
            return None
        try:
            return int(self.ledger.next_event_seq(job_id))
        except sa.exc.SQLAlchemyError as exc:
            # Sent unnumbered rather than not at all; subscribers deliver it as it comes.
            self._store_paused_until = time.monotonic() + PAUSE
            log.warning(
                "job %s: event %s sent without a seq: the job store is unavailable (%s); "
                "events go unnumbered for the next %gs",
                job_id,
                event.type,
                exc,
                PAUSE,
            )
            return None

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # noqa: BLE001 - closing a broken connection
                log.debug("closing the event connection failed", exc_info=True)
        self._connection = None
        self._producer = None


# -- a subscribing process ------------------------------------------------------------


class EventSubscriber(StoppableConsumer):
    """Receives the daemons' job events in this process, on its own thread.

    :attr:`ready` is set once this process's queue is bound and listening:
    events published from then on are delivered.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.settings = settings = proxy.settings
        self.origin = origin_of(proxy)
        self.connection = make_connection(settings)
        self.queue = kombu.Queue(
            f"{settings.broker_queue_prefix}events.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}",
            exchange=events_exchange(settings),
            routing_key="",
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
        self.dispatcher = EventDispatcher(proxy.listeners, proxy.registry)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self.stop_events = (self._stop,)
        self._iterations = 0
        self._last: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:  # noqa: N803 - Kombu's name
        return [DoorConsumer(channel, queues=[self.queue], on_message=self.on_message, accept=[JSON])]

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        self._iterations = 0

    def on_iteration(self) -> None:
        # The second iteration follows a completed wait: by then even Redis has
        # sent its SUBSCRIBE (done in the first wait).
        self._iterations += 1
        if self._iterations >= 2:
            self.ready.set()

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        self.ready.clear()
        log.warning(
            "event subscriber: broker %s unreachable (%s); events published meanwhile "
            "are not received; retrying in %.1fs",
            self.settings.broker.masked(),
            exc,
            interval,
        )
        self._stop.wait(min(interval, 1.0))

    def on_message(self, message: Any) -> None:
        try:
            event, origin = self.check(message)
        except Exception as exc:  # noqa: BLE001 - one message must not stop this thread
            log.error("event subscriber: event message refused: %s", exc)
            message.ack()
            return
        message.ack()
        if origin == self.origin:
            return  # this process ran the job: its listeners had the event already
        job_id, seq = event.get("job_id"), event.get("seq")
        if isinstance(job_id, str) and isinstance(seq, int):
            if seq <= self._last.get(job_id, 0):
                log.info(
                    "event subscriber: job %s event %s seq %d arrived after seq %d; dropped",
                    job_id,
                    event.type,
                    seq,
                    self._last[job_id],
                )
                return
            self._last[job_id] = seq
        self.dispatcher.deliver(event)

    def check(self, message: Any) -> tuple[Event, str]:
        """The event in *message* and its origin; as at the daemon's door,
        nothing is decoded before the size and the signature are checked.

        :raises InvalidMessage: (or any error) the message is refused.
        """
        settings = self.settings
        return decode_event(checked_body(message, settings.max_message_size, settings.secret, self.queue.exchange.name))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pscheduler-event-subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.run()
                except Exception:  # noqa: BLE001 - a bug must not stop the events for good
                    log.exception("event subscriber failed; starting again in %gs", RESTART_PAUSE)
                    self._stop.wait(RESTART_PAUSE)
        finally:
            self.connection.release()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def start_subscriber(event: Any) -> None:
    """``ApplicationCreated`` subscriber (``scheduler.events.subscribe``):
    start receiving the daemons' job events in this process."""
    proxy = event.app.registry.scheduler
    if getattr(proxy, "in_process", False) or getattr(proxy, "_subscriber", None) is not None:
        return
    subscriber = EventSubscriber(proxy)
    proxy._subscriber = subscriber
    subscriber.start()
    log.info("receiving job events from the daemons on %s", subscriber.queue.name)
