"""Consumer: the daemon's door, where requests come in from the broker.

Between the broker (:mod:`pyramid_scheduler.brokers`) and the engine
(:mod:`.engine`). :class:`JobConsumer` (a Kombu ``ConsumerMixin``) receives
raw messages; only ``application/json`` bodies are read (with the standard
library's ``json``, never pickle), then checked by
:func:`~pyramid_scheduler.wire.messages.decode`. A refused message is written
to the dead-letter table with its reason, logged, and rejected without
requeue; the consumer goes on. A good request is handed to the engine, and the
message is acked only after the engine has stored the job; if the job store
fails, the message is requeued after a bounded back-off. The messages taken
together (one Redis round trip, or those already received on AMQP and SQL)
are checked one by one and stored together. A ``durable=False`` job is
stored not at all: its message is acked, and once the broker has the acks
of the batch its job goes to the worker pool (:mod:`.fastlane`), the
consumer waiting for room there before it takes more messages.
"""

from __future__ import annotations

import select
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import sqlalchemy as sa

from pyramid_scheduler import tracing
from pyramid_scheduler.brokers.connection import JSON, StoppableConsumer, make_queue
from pyramid_scheduler.brokers.sql import release_claims
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.daemon.fastlane import Accepted
from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage
from pyramid_scheduler.faults import crash_point
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.wire.door import DoorConsumer, checked_body, kept_for_replay
from pyramid_scheduler.wire.messages import JobRequest, decode
from pyramid_scheduler.wire.signing import sent_too_long_ago

log = get_logger(__name__)

#: Seconds to wait before requeueing a message the job store could not take.
STORE_BACKOFF = (0.5, 30.0)


#: Seconds the consumer waits for the rest of a message partly received
#: when it takes the messages already delivered (AMQP).
RECEIVED_WAIT = 0.001

#: Seconds an idle consumer waits for a message before it looks at its stop
#: flag again (SQL and AMQP; the Redis channel waits a second per BRPOP):
#: how soon SIGTERM stops the consuming.
IDLE_WAIT = 0.2


def _readable(transport: Any, sock: Any) -> bool:
    """True if py-amqp's *transport* has bytes to read without waiting: in
    its buffer, in the TLS layer, or on the socket."""
    if getattr(transport, "_read_buffer", None):
        return True
    pending = getattr(sock, "pending", None)  # an SSL socket's decrypted bytes
    if pending is not None and pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def redis_channel(channel: Any) -> Any:
    """:mod:`pyramid_scheduler.brokers.redis` if *channel* is one of its channels, else None.

    Looked up, not imported: the module loads Kombu's Redis transport, which
    needs the redis extra, and a channel of it exists only once
    :func:`pyramid_scheduler.brokers.connection.make_connection` imported it for a Redis URL.
    """
    module = sys.modules.get("pyramid_scheduler.brokers.redis")
    return module if module is not None and isinstance(channel, module.Channel) else None


class Stopping(Exception):
    """Raised from the reconnect loop when a stop was asked for."""


#: Seconds between two attempts to reconnect to the broker.
RECONNECT_INTERVAL = 1.0


class JobConsumer(StoppableConsumer):
    def __init__(self, engine: Engine, connection: Any, stop: threading.Event) -> None:
        self.engine = engine
        self.connection = connection
        self.stop_event = stop
        self.stop_events = (stop, engine.lease_lost)
        self.queues = {make_queue(engine.settings, name).name: name for name in engine.queues}
        self._backoff = STORE_BACKOFF[0]
        self._channels: list[Any] = []
        self._batch: list[tuple[Any, str, JobRequest | InvalidMessage | InvalidJob]] | None = None
        self._redis = False  # consuming through our Redis channel
        #: The durable=False jobs whose messages were acked, to hand to the
        #: pool once the broker has the acks (after the batch).
        self._accepted: list[Accepted] = []

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:  # noqa: N803 - Kombu's name
        settings = self.engine.settings
        queues = [make_queue(settings, name) for name in self.engine.queues]
        options = {"on_message": self.on_message, "accept": [JSON], "prefetch_count": settings.broker_prefetch}
        self._redis = redis_channel(channel) is not None
        if not self._redis:
            return [DoorConsumer(channel, queues=queues, **options)]
        channel.batch = self.batch
        channel.room = self.room
        if len(queues) == 1:
            return [DoorConsumer(channel, queues=queues, **options)]
        # Our Redis channel waits on one queue: give each queue a channel.
        for extra in self._channels:
            extra.close()
        self._channels = [channel.connection.client.channel() for _ in queues[1:]]
        for extra in self._channels:
            extra.batch = self.batch
            extra.room = self.room
        return [DoorConsumer(channel, queues=queues[:1], **options)] + [
            DoorConsumer(extra, queues=[queue], **options)
            for extra, queue in zip(self._channels, queues[1:], strict=True)
        ]

    def room(self) -> int:
        """How many more runs the worker pool can start soon: its threads
        (``scheduler.executor.max_workers``) less the batches of runs waiting
        in it or running."""
        return self.engine.settings.max_workers - self.engine.runner.pending

    def on_iteration(self) -> None:
        # On Redis, before taking more messages: while every thread of the
        # worker pool is busy, leave the next messages in the queue, for
        # another daemon with a free thread to take (our Redis channel takes
        # no more than the room left: see room()), rather than hold them here
        # or store their run-now jobs for later in APScheduler's table.
        # (Redis has no heartbeats to miss meanwhile; RabbitMQ's would, and it
        # pushes the prefetched messages anyway: there a backlog beyond
        # DIRECT_BACKLOG batches goes to APScheduler's table.)
        if self._redis:
            runner = self.engine.runner
            while not runner.wait_below(self.engine.settings.max_workers, 1.0) and not self.should_stop:
                pass

    def consume(
        self, limit: int | None = None, timeout: float | None = None, safety_interval: float = 1, **kwargs: Any
    ) -> Iterator[None]:
        """Kombu's loop (:meth:`kombu.mixins.ConsumerMixin.consume`), except
        that on the transports that deliver one message per
        ``drain_events`` (AMQP, SQL) the messages already received behind the
        first, up to ``scheduler.broker.prefetch``, are handled as one batch
        (:meth:`batch`), as our Redis channel hands over the messages it
        takes in one round trip."""
        elapsed = 0.0
        with self.consumer_context(**kwargs) as (conn, _channel, _consumers):
            for _ in range(limit) if limit else count():
                if self.should_stop:
                    break
                self.on_iteration()
                try:
                    if self._redis:
                        wait = safety_interval
                        conn.drain_events(timeout=wait)
                    else:
                        wait = min(safety_interval, IDLE_WAIT)
                        self._drain_batch(conn, wait)
                except TimeoutError:
                    conn.heartbeat_check()
                    elapsed += wait
                    if timeout and elapsed >= timeout:
                        raise
                except OSError:
                    if not self.should_stop:
                        raise
                else:
                    self.hand_accepted()
                    yield
                    elapsed = 0.0
                finally:
                    self.drop_accepted()

    def _drain_batch(self, conn: Any, timeout: float) -> None:
        """Wait up to *timeout* for a message and take those already
        delivered behind it (:meth:`_drain_received`), as one batch."""
        with self.batch():
            conn.drain_events(timeout=timeout)
            self._drain_received(conn)

    def _drain_received(self, conn: Any) -> None:
        """Deliver what the broker has already sent, without waiting for more
        (at most prefetch - 1 more messages: RabbitMQ sends no more unacked)."""
        transport = getattr(conn.connection, "transport", None)
        sock = getattr(transport, "sock", None)  # py-amqp's; the SQL transport has none
        for _ in range(self.engine.settings.broker_prefetch - 1):
            if sock is not None and not _readable(transport, sock):
                return
            try:
                # Not 0 on a socket: py-amqp would spin, non-blocking, on a
                # frame received in part; a timeout keeps the part for later.
                conn.drain_events(timeout=0 if sock is None else RECEIVED_WAIT)
            except TimeoutError:
                return

    def hand_accepted(self) -> None:
        """Hand the ``durable=False`` jobs of the batch just settled to the
        worker pool, in order, each once the pool has room (see
        :mod:`.fastlane`): their acks are with the broker now (on Redis the
        batch's acks leave the processing list as it ends), so none runs
        before its message is gone for good."""
        accepted, self._accepted = self._accepted, []
        for job in accepted:
            try:
                job.hand(lambda: self.should_stop)
            except Exception:  # noqa: BLE001 - a bug: this job only
                log.exception("job %s: durable=False, acked, not handed to the worker pool: lost", job.job_id)

    def drop_accepted(self) -> None:
        """Forget the ``durable=False`` jobs acked in a batch whose taking
        failed afterwards (the connection broke): whether the broker has
        their acks is unknown, and a job whose message comes back must not
        have run already. At most once: they may be lost; logged."""
        if self._accepted:
            log.error(
                "durable=False job(s) %s acked as the broker connection failed: not run "
                "(at most once: if their messages come back they run then, else they are lost)",
                ", ".join(job.job_id for job in self._accepted),
            )
            for job in self._accepted:
                job.drop()
            self._accepted = []

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        # At start and after every reconnect: a message taken just as the
        # connection broke (its reply lost) waits in this daemon's claims.
        self.release_claims(channel)

    def release_claims(self, channel: Any) -> None:
        """Give back what was taken from these queues and not finished by
        this daemon or by daemons that are dead (Redis, SQL).

        Every daemon of a queue consumes it, each under its owner name, and
        each settles every message it took before taking more: here, between
        two batches, none of this daemon's own claims is being handled (any
        left are from before its connection broke), and those of the other
        live daemons are theirs until they are found dead. They need not wait
        out the visibility timeout (SQL), and on Redis a message in a
        processing list would otherwise never come back. With no heartbeat
        (the memory job store: one daemon alone on its queues), every claim
        is given back. A message that may have been handled already arrives
        twice; the job store absorbs it by job id. The daemons that die later
        are released by the one doing the single-owner work
        (:func:`~pyramid_scheduler.brokers.connection.release_dead_claims`).
        """
        engine = self.engine
        settings = engine.settings
        names = list(self.queues)
        membership = engine.membership
        live: Callable[[set[str]], set[str]] | None = None
        if membership is not None:

            def live(found: set[str]) -> set[str]:
                try:
                    return (membership.live() - {engine.owner}) & found
                except sa.exc.SQLAlchemyError as exc:
                    log.warning(
                        "job store unavailable (%s): only this daemon's own unfinished messages are "
                        "given back now; a dead daemon's, once it is found dead",
                        exc,
                    )
                    return found - {engine.owner}

        if settings.broker.kind == "sql":
            released = release_claims(settings.broker.url, names, settings.sqlite_wal, live)
        elif (module := redis_channel(channel)) is not None:
            released = module.release_claims(channel, names, live)
        else:
            return
        if released:
            log.warning(
                "%d message(s) left unfinished (by a dead daemon, or by this one before a reconnect) "
                "are back in the queue",
                released,
            )

    @contextmanager
    def establish_connection(self) -> Iterator[Any]:
        # Kombu's mixin retries with a back-off growing to 30 s, so after a
        # long outage the daemon sat idle up to 30 s with the broker back:
        # retry at once, then every RECONNECT_INTERVAL at most.
        with self.create_connection() as conn:
            conn.ensure_connection(
                self.on_connection_error,
                self.connect_max_retries,
                interval_start=0,
                interval_step=RECONNECT_INTERVAL / 2,
                interval_max=RECONNECT_INTERVAL,
            )
            yield conn

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        # Kombu sleeps *interval* (at most RECONNECT_INTERVAL) after this.
        if self.should_stop:
            raise Stopping() from exc
        log.warning(
            "broker %s unreachable (%s); retrying in %.1fs", self.engine.settings.broker.masked(), exc, interval
        )

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Around the messages taken together (by our Redis channel in one
        round trip, else by :meth:`_drain_batch`): they are checked one by
        one, then stored together and settled (:meth:`store`). If taking
        them fails (the connection broke), none is stored or settled: the
        broker delivers them again."""
        batch: list[tuple[Any, str, JobRequest | InvalidMessage | InvalidJob]] = []
        self._batch = batch
        try:
            yield
        finally:
            self._batch = None
        if batch:
            self.store(batch)

    def on_message(self, message: Any) -> None:
        try:
            queue = self.queues.get(message.delivery_info.get("routing_key"), "?")
        except Exception:  # noqa: BLE001 - delivery_info comes from the sender on Redis and SQL
            queue = "?"
        checked = (message, queue, self.check(message))
        if self._batch is not None:
            self._batch.append(checked)
        else:
            self.store([checked])

    def check(self, message: Any) -> JobRequest | InvalidMessage | InvalidJob:
        """The request in *message*, or why it is refused at the door.

        Cheapest first, and nothing decoded before it is known to be small
        enough and signed: what the door already refused
        (:mod:`~pyramid_scheduler.wire.door`), the content type, the size, the
        signature (when ``scheduler.secret`` is set), then the body and its
        age. Whatever goes wrong refuses this message only.
        """
        try:
            return self._check(message)
        except (InvalidMessage, InvalidJob) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one message must not stop the consumer
            log.error("unexpected error checking a message", exc_info=exc)
            return InvalidMessage(f"unexpected error checking the message: {type(exc).__name__}: {exc}"[:500])

    def _check(self, message: Any) -> JobRequest:
        settings = self.engine.settings
        secret = settings.secret
        request = decode(checked_body(message, settings.max_message_size, secret))
        if request.queue not in self.engine.queues:
            raise InvalidMessage(f"queue {request.queue!r} is not one this daemon runs")
        if tracing.ENABLED and request.op == "add":
            tracing.remember(request.id, tracing.carried(message.headers))
        if secret is not None:
            stale = sent_too_long_ago(request.sent_at, settings.message_age_limit)
            if stale:
                raise InvalidMessage(f"job {request.id}: {stale}")
        crash_point("received")
        return request

    def store(self, batch: list[tuple[Any, str, JobRequest | InvalidMessage | InvalidJob]]) -> None:
        """Carry out the requests of *batch* in order (the engine stores the
        run-now jobs among them together), then settle each message, in
        their order: ack once its job is stored, dead-letter it if it was
        refused at the door or cannot be carried out (all of the batch's dead
        letters written together, after its jobs), requeue it (and the ones
        after it) if the job store failed.

        A request the job store cannot take (a value the database refuses:
        a NUL character on PostgreSQL, a constraint) fails the statement it
        shares with others: the requests of a failed statement are tried
        again one by one, and only the one the database refuses is refused.
        """
        requests = [item for _, _, item in batch if isinstance(item, JobRequest)]
        outcomes_of = self.engine.submit_many(requests) if requests else []
        if len(requests) > 1 and any(_refused_by_database(outcome) or _unexpected(outcome) for outcome in outcomes_of):
            outcomes_of = self._one_by_one(requests, outcomes_of)
        results = iter(outcomes_of)
        outcomes = [next(results) if isinstance(item, JobRequest) else item for _, _, item in batch]
        if any(isinstance(outcome, str) for outcome in outcomes):
            crash_point("persisted")
        failed = False
        refused: list[tuple[Any, str, str]] = []
        for (message, queue, request), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, str):
                message.ack()
                if isinstance(outcome, Accepted):
                    self._accepted.append(outcome)
                assert isinstance(request, JobRequest)
                log.debug("queue %s: job %s %s (%s)", queue, request.id, request.op, outcome)
            elif isinstance(outcome, (InvalidMessage, InvalidJob)):
                refused.append((message, queue, str(outcome)))
            elif _refused_by_database(outcome):
                refused.append(
                    (message, queue, f"the job store cannot store this message: {type(outcome).__name__}: {outcome}")
                )
            elif isinstance(outcome, sa.exc.SQLAlchemyError):
                if not failed:
                    log.error(
                        "queue %s: job store unavailable (%s); message(s) requeued, retrying in %.1fs",
                        queue,
                        outcome,
                        self._backoff,
                    )
                message.requeue()
                failed = True
            else:
                log.error("queue %s: unexpected error handling a message", queue, exc_info=outcome)
                refused.append((message, queue, f"unexpected error: {type(outcome).__name__}: {outcome}"))
        if refused:
            self.refuse(refused)
        if failed:
            self.stop_event.wait(self._backoff)
            self._backoff = min(self._backoff * 2, STORE_BACKOFF[1])
        else:
            self._backoff = STORE_BACKOFF[0]

    def _one_by_one(self, requests: list[JobRequest], outcomes: list[str | Exception]) -> list[str | Exception]:
        """*outcomes* with the requests that failed with others tried again
        alone; after a job store outage, the rest are left to be requeued."""
        again = list(outcomes)
        for index, (request, outcome) in enumerate(zip(requests, outcomes, strict=True)):
            if isinstance(outcome, str) or isinstance(outcome, (InvalidMessage, InvalidJob)):
                continue
            alone = self.engine.submit_many([request])[0]
            again[index] = alone
            if isinstance(alone, sa.exc.SQLAlchemyError) and not _refused_by_database(alone):
                break  # the job store is down: requeue this one and the rest
        return again

    def refuse(self, refused: list[tuple[Any, str, str]]) -> None:
        """Dead-letter the messages of *refused* ((message, queue, reason)),
        in one write, and reject them; if the dead letters cannot be written,
        requeue them (after a back-off)."""
        letters = []
        settings = self.engine.settings
        for message, queue, reason in refused:
            log.error("queue %s: message refused and dead-lettered: %s", queue, reason)
            kept, signed = kept_for_replay(message, settings.max_message_size, settings.secret)
            letters.append((queue, reason, message.body, kept, signed))
        ledger = self.engine.ledger
        keep = settings.dead_letters_max
        try:
            dropped = ledger.dead_letter_many(letters, keep)
        except sa.exc.SQLAlchemyError as exc:
            log.error("could not dead-letter %d message(s) (%s); requeued", len(refused), exc)
            for message, _queue, _reason in refused:
                message.requeue()
            self.stop_event.wait(self._backoff)
            return
        if dropped:
            log.warning(
                "%d oldest dead letter(s) dropped to keep scheduler.dead_letters.max (%d); "
                "%d dropped since this daemon started",
                dropped,
                keep,
                ledger.dead_letters_dropped,
            )
        for message, _queue, _reason in refused:
            message.reject(requeue=False)


def _refused_by_database(outcome: Any) -> bool:
    """True if the job store refused a value of the request (not: is down):
    a data or constraint error, or text the driver cannot encode (a lone
    surrogate from a JSON ``\\ud800``)."""
    if isinstance(outcome, sa.exc.StatementError) and not isinstance(outcome, sa.exc.DBAPIError):
        outcome = outcome.orig
    return isinstance(outcome, (sa.exc.DataError, sa.exc.IntegrityError, UnicodeError))


def _unexpected(outcome: Any) -> bool:
    return (
        isinstance(outcome, Exception)
        and not isinstance(outcome, (InvalidMessage, InvalidJob, sa.exc.SQLAlchemyError))
        and not _refused_by_database(outcome)
    )
