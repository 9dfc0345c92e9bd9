"""Kombu's Redis transport, receiving without a window for loss.

Kombu's Redis channel takes a message with ``BRPOP`` and only then records it
in its ``unacked`` hash: a consumer killed between the two (or before it
reads the reply from its socket) loses the message for good
(celery/kombu#305). The daemon promises that a job whose ``add_*_job``
returned is stored, so this channel changes just that step: ``BLMOVE`` moves
the message atomically from the queue to the queue's *processing* list, and
it leaves that list only after the message has been handled (stored and
acked, or dead-lettered, or requeued). A message is therefore always in the
queue, in the processing list or in ``unacked``; :func:`release_claims`,
called by the daemon when it takes a queue's lease, puts back whatever an
earlier holder left in either. Everything else (publishing, acks, the
visibility timeout, connections) is Kombu's own, except that a transport
the connection lets go of closes its poller at once.

Needs Redis 6.2 or later (``BLMOVE``). Each channel waits on one queue; the
daemon gives every queue its own channel. ``basic_get`` (which the daemon
does not use) is Kombu's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads
from kombu.utils.objects import cached_property

from .faults import crash_point

#: Suffix of the list holding a queue's messages while they are handled.
PROCESSING = ":processing"


def processing_key(queue: str) -> str:
    return queue + PROCESSING


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _reliable_key: str | None = None
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The client for one operation: *client*, or the channel's client of
        its current connection pool (Kombu makes a new one per call)."""
        if client:
            yield client
            return
        pool = self.pool  # Kombu makes a new pool after a fork or a close
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]
        source, target = queue, processing_key(queue)
        if self.global_keyprefix:
            source, target = self.global_keyprefix + source, self.global_keyprefix + target
        self._reliable_key = queue
        self._in_poll = self.client.connection
        if hasattr(self, "_brpop_sent_at"):  # Kombu 5.6+: its health check reads it
            self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self.client.connection.send_command("BLMOVE", source, target, "RIGHT", "LEFT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not item:
                raise kombu_redis.Empty()
            crash_point("taken")
            queue = self._reliable_key
            assert queue is not None
            self._queue_cycle.rotate(queue)
            # The consumer's callback runs in here: the message is handled
            # (and acked or requeued) when _deliver returns.
            try:
                self.connection._deliver(loads(item.decode("utf-8")), queue)
            finally:
                with self.conn_or_acquire() as client:
                    client.lrem(processing_key(queue), 1, item)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel
    _client: Any = None

    @property
    def client(self) -> Any:
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        # Kombu's Connection lets go of its transport by setting this to None
        # (on every failed connect or publish) and left the poller's epoll
        # descriptor to the garbage collector: a producer retrying against a
        # closed port held one more descriptor per attempt until a collection.
        self._client = value
        if value is None and "cycle" in self.__dict__:
            self.cycle.poller.close()  # type: ignore[union-attr]

    @cached_property
    def driver_name(self) -> str:
        return "redis"


def release_claims(channel: Channel, queues: list[str]) -> int:
    """Put back every message of *queues* that an earlier consumer took and
    did not finish: those in the processing lists, and those in Kombu's
    ``unacked`` hash (without waiting for the visibility timeout). Return how
    many. Only the holder of the queues' lease may call this."""
    released = 0
    names = set(queues)
    with channel.conn_or_acquire() as client:
        for queue in queues:
            while client.lmove(processing_key(queue), queue, "RIGHT", "RIGHT") is not None:
                released += 1
        for tag, raw in client.hgetall(channel.unacked_key).items():
            _message, _exchange, routing_key = loads(raw.decode("utf-8"))
            if routing_key in names:
                channel.qos.restore_by_tag(tag.decode("utf-8"), client)
                released += 1
    return released
