"""Broker: Kombu connections, queue declarations and the bounded publisher.

Both ends build their :class:`kombu.Connection` with :func:`make_connection`,
so the URL forms, timeouts and transport options are read in one place. The
producer side publishes through :class:`Publisher`: a pool of connections and
producers, publishing to the default exchange with the queue's name as routing
key (one broker round trip on Redis, no binding lookup), with a retry policy
bounded by ``scheduler.broker.timeout``. Kombu's own defaults wait forever
(publish retries, reconnects, pool acquire); here every wait has a bound, and
the bounds of one publish add up to ``scheduler.broker.timeout``: waiting for
a pooled connection and each broker round trip (connect, send, confirm) get
at most half of it, and no retry starts that could not finish in time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import kombu
from kombu.mixins import ConsumerMixin
from kombu.pools import ProducerPool

from pyramid_scheduler.brokers.sql import Transport as SQLTransport
from pyramid_scheduler.brokers.sql import release_consumers
from pyramid_scheduler.exceptions import EnqueueError
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.wire.door import JSON, entry_limit
from pyramid_scheduler.wire.signing import signature_headers

log = get_logger(__name__)

#: Seconds an entry of Kombu's ``unacked`` hash waits before a Redis consumer
#: puts it back. Only Kombu's own Redis channel writes there: the daemon's
#: keeps its claims in processing lists of its own.
DEFAULT_VISIBILITY_TIMEOUT = 60
#: Seconds a row of the SQL transport stays claimed before any consumer may
#: take it again. Only a backstop: a dead daemon's claims are given back as
#: soon as it is found dead (:func:`release_dead_claims`), and a live one
#: acks each message once its job is stored, so a claim this old is one of a
#: consumer stuck while its heartbeat goes on. Shorter, a live daemon slow to
#: store (a database waiting on a lock) would see its messages taken by
#: another one and carried out twice.
SQL_VISIBILITY_TIMEOUT = 300


def make_connection(
    settings: SchedulerSettings,
    timeout: float | None = None,
    consumer: bool = False,
    consumer_name: str | None = None,
) -> kombu.Connection:
    """A new (lazy) Kombu connection for ``scheduler.broker.url``; *timeout*
    (default ``scheduler.broker.timeout``) bounds each connect, socket read
    and write, and SQLite lock wait.

    On Redis and the SQL transport, the messages a consumer takes are claimed
    under *consumer_name* (the daemon's owner name), so that only a dead
    consumer's claims are given back to the others (``release_claims``).

    A *consumer* connection to RabbitMQ sends heartbeats every
    2 × ``scheduler.broker.timeout`` (at least 2 s): a connection that went
    silent without a reset (a dropped NAT entry, a frozen host) is given up
    after two missed beats. Without them the daemon waited on it for ever,
    the kernel's keepalive being answered by whatever held the other end.
    """
    if timeout is None:
        timeout = settings.broker_timeout
    options: dict[str, Any] = {}
    url = settings.broker.url
    scheme = url.split("://", 1)[0]
    entry = entry_limit(settings.max_message_size)
    if settings.broker.kind == "sql":
        options.update(
            visibility_timeout=SQL_VISIBILITY_TIMEOUT,
            url=url,
            busy_timeout=timeout,
            wal=settings.sqlite_wal,
            max_entry_size=entry,
        )
        url = "sql://"
    elif scheme.startswith(("redis", "rediss", "sentinel")):
        prefix = settings.broker_queue_prefix
        options.update(
            visibility_timeout=DEFAULT_VISIBILITY_TIMEOUT,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            unacked_key=f"{prefix}unacked",
            unacked_index_key=f"{prefix}unacked_index",
            unacked_mutex_key=f"{prefix}unacked_mutex",
            max_entry_size=entry,
        )
    elif scheme.endswith(("amqp", "amqps")):
        options.update(confirm_publish=True, read_timeout=timeout, write_timeout=timeout)
    options.update(settings.broker_transport_options)
    if consumer_name is not None and (settings.broker.kind == "sql" or scheme in ("redis", "rediss")):
        options["consumer_name"] = consumer_name  # the transports of this package read it
    kwargs: dict[str, Any] = {"connect_timeout": timeout, "transport_options": options}
    if consumer and scheme.endswith(("amqp", "amqps")):
        kwargs["heartbeat"] = max(2, math.ceil(2 * settings.broker_timeout))
    if settings.broker.kind == "sql":
        kwargs["transport"] = SQLTransport
    elif scheme in ("redis", "rediss"):
        if scheme == "rediss":  # Kombu reads TLS options from the scheme it is given
            kwargs["ssl"] = kombu.Connection(url).ssl
        # Imported here: Kombu's Redis transport needs the redis extra.
        from pyramid_scheduler.brokers.redis import Transport as RedisTransport

        kwargs["transport"] = RedisTransport
    return kombu.Connection(url, **kwargs)


def broker_queue_name(settings: SchedulerSettings, queue: str) -> str:
    return settings.broker_queue_prefix + queue


def release_dead_claims(settings: SchedulerSettings, queues: Iterable[str], dead: Collection[str]) -> int:
    """Give back to the broker queues of *queues* the messages that the
    daemons named in *dead* (their owner names) took and did not finish;
    return how many.

    The daemon doing the queues' single-owner work calls it for the daemons
    it finds dead, while the others go on consuming: on Redis and the SQL
    transport a dead daemon's claims are otherwise given back only at a
    daemon's start or reconnect (or, on SQL, after the visibility timeout).
    Opens a short connection of its own. On RabbitMQ there is nothing to do:
    the broker requeued a dead consumer's unacked messages when its
    connection closed.

    :raises Exception: the broker's error, if it cannot be reached.
    """
    if not dead:
        return 0
    names = [broker_queue_name(settings, queue) for queue in queues]
    if settings.broker.kind == "sql":
        return release_consumers(settings.broker.url, names, dead, settings.sqlite_wal)
    if settings.broker.url.split("://", 1)[0] not in ("redis", "rediss"):
        return 0
    from pyramid_scheduler.brokers.redis import release_consumers as release_redis_consumers

    with make_connection(settings) as conn:
        return release_redis_consumers(conn.default_channel, names, dead)


def make_queue(settings: SchedulerSettings, queue: str) -> kombu.Queue:
    """The durable Kombu queue that carries *queue*'s messages."""
    name = broker_queue_name(settings, queue)
    return kombu.Queue(name, exchange=kombu.Exchange(""), routing_key=name, durable=True)


def _bound(producer: Any, kqueue: kombu.Queue) -> kombu.Queue:
    """*kqueue* bound to *producer*'s channel, made once per channel.

    Kombu declares a queue once per connection (it remembers which), but
    binds an unbound queue to the channel again at every publish just to ask
    (a copy of the queue and its exchange: about a tenth of a publish).
    """
    cache = producer.__dict__.setdefault("_pscheduler_bound", {})
    bound = cache.get(kqueue.name)
    if bound is None or bound.channel is not producer.channel:
        bound = cache[kqueue.name] = kqueue.bind(producer.channel)
    return bound


#: What a publish may take beyond ``scheduler.broker.timeout``: Kombu's and
#: the client libraries' own work between the bounded waits.
SLACK = 0.5


def retry_until(
    deadline: float,
    reserve: float = 0.0,
    give_up: Callable[[BaseException], BaseException] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> dict[str, Any]:
    """Kombu's ``retry_policy`` for a publish that must be over by
    *deadline* (:func:`time.monotonic`): retry at once, then up to every
    half second, while one more attempt of *reserve* seconds would still end
    in time; then raise ``give_up(error)`` (default: the error itself).
    *on_retry* is told of each retry."""

    def errback(exc: BaseException, interval: float) -> None:
        if time.monotonic() + interval + reserve > deadline:  # no time for another try
            if give_up is None:
                raise exc
            raise give_up(exc) from exc
        if on_retry is not None:
            on_retry(exc, interval)

    return {"max_retries": 100, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.5, "errback": errback}


class StoppableConsumer(ConsumerMixin):  # type: ignore[misc]
    """Kombu's ``ConsumerMixin`` that stops once any of :attr:`stop_events`
    is set, so that another thread (a signal, a lost lease) can stop it;
    setting ``should_stop`` sets the first."""

    stop_events: tuple[threading.Event, ...]

    @property  # type: ignore[override]
    def should_stop(self) -> bool:
        return any(event.is_set() for event in self.stop_events)

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self.stop_events[0].set()


class Publisher:
    """Publishes encoded job requests; thread-safe; every wait bounded.

    :meth:`publish` returns once the broker has the message (RabbitMQ: after
    the publisher confirm) or raises :class:`EnqueueError` within
    ``scheduler.broker.timeout`` seconds (plus :data:`SLACK`).
    """

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.queues = {name: make_queue(settings, name) for name in settings.queues}
        self._lock = threading.Lock()
        self._connection: kombu.Connection | None = None
        self._producers: ProducerPool | None = None

    def _pool(self) -> ProducerPool:
        with self._lock:
            if self._producers is None:
                limit = self.settings.broker_pool_limit
                self._connection = make_connection(self.settings, self.attempt_timeout)
                self._producers = ProducerPool(self._connection.Pool(limit=limit), limit=limit)
            return self._producers

    @property
    def attempt_timeout(self) -> float:
        """The bound of one broker round trip, and of the wait for a pooled
        connection: half of ``scheduler.broker.timeout``, so a caller that
        waited for the pool still has time for one attempt."""
        return self.settings.broker_timeout / 2

    def publish(self, body: bytes, queue: str, job_id: str, headers: dict[str, str] | None = None) -> None:
        """Publish *body* (JSON bytes) on *queue*, with *headers* (the trace
        context, :mod:`pyramid_scheduler.tracing`) beside the signature's.

        :raises EnqueueError: the broker did not confirm it in time. Almost
            always nothing was sent; if the connection broke just after the
            write, the message may still have arrived. Retrying with the same
            job id is safe: the daemon stores one job per id.
        """
        timeout = self.settings.broker_timeout
        attempt = self.attempt_timeout
        deadline = time.monotonic() + timeout
        kqueue = self.queues[queue]
        signed = signature_headers(body, self.settings.secret, kqueue.routing_key)
        if headers:
            signed = {**headers, **(signed or {})}

        def give_up(exc: BaseException) -> EnqueueError:
            return EnqueueError(
                f"job {job_id}: broker {self.settings.broker.masked()} did not accept the "
                f"message within {timeout:g}s (scheduler.broker.timeout): {exc}"
            )

        def on_retry(exc: BaseException, interval: float) -> None:
            log.warning("job %s: publish to queue %s failed (%s); retrying in %.2fs", job_id, queue, exc, interval)

        policy = retry_until(deadline, attempt, give_up, on_retry)
        try:
            with self._pool().acquire(block=True, timeout=attempt) as producer:
                producer.publish(
                    body,
                    routing_key=kqueue.routing_key,
                    exchange="",
                    declare=[_bound(producer, kqueue)],
                    content_type=JSON,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    retry=True,
                    retry_policy=policy,
                    message_id=job_id,
                    headers=signed,
                    timeout=attempt,
                )
        except EnqueueError:
            raise
        except kombu.exceptions.LimitExceeded as exc:
            raise EnqueueError(
                f"job {job_id}: no broker connection free within {attempt:g}s "
                f"(scheduler.broker.pool_limit = {self.settings.broker_pool_limit})"
            ) from exc
        except Exception as exc:
            if isinstance(exc.__cause__, EnqueueError):  # raised by errback, wrapped by Kombu
                raise exc.__cause__ from exc.__cause__.__cause__
            raise EnqueueError(
                f"job {job_id}: publishing to queue {queue!r} on {self.settings.broker.masked()} failed: {exc}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            if self._producers is not None:
                self._producers.force_close_all()
                self._producers.connections.force_close_all()
            if self._connection is not None:
                self._connection.release()
            self._producers = None
            self._connection = None
