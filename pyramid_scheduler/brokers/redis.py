"""Kombu's Redis transport, receiving without a window for loss, in batches.

Kombu's Redis channel takes a message with ``BRPOP`` and only then records it
in its ``unacked`` hash: a consumer killed between the two (or before it
reads the reply from its socket) loses the message for good
(celery/kombu#305). The daemon promises that a job whose ``add_*_job``
returned is stored, so this channel changes just that step: ``BLMOVE`` moves
the message atomically from the queue to the queue's *processing* list, and
it leaves that list only after the message has been handled (stored and
acked, or dead-lettered, or requeued). A message is therefore always in the
queue or in a processing list.

Every daemon of a queue consumes it, so each has processing lists of its own:
``<queue>:processing:<consumer>``, *consumer* being the daemon's name (the
``consumer_name`` transport option, its heartbeat row's owner). What a daemon
took and did not finish is its own until it is dead: :func:`release_claims`
(at a daemon's start and after each reconnect) puts back the lists of the
consumers that are not alive, the shared ``<queue>:processing`` list of
earlier builds, and Kombu's ``unacked`` hash, which only a consumer on Kombu's
own channel writes; :func:`release_consumers` puts back the lists of the
daemons just found dead, while the others run.

Because the processing list already covers the time a message is handled,
this channel keeps its acks in the process (:class:`QoS`) instead of writing
each one to the ``unacked`` hash and its index: two Redis round trips per
message fewer. A requeued message goes back to the queue and leaves the
processing list in one ``MULTI``; a message neither acked nor rejected stays
in the processing list until its consumer is dead and released.

When the consumer's prefetch count allows more than one message, the channel
takes the messages already waiting (up to that count, and up to what
:attr:`Channel.room` says the consumer can start soon, so that the messages
one daemon cannot start yet stay in the queue for the others) in the same
round trip as the first one's follow-up, hands them to the consumer inside its
:attr:`Channel.batch` context (where the daemon stores them together), and
clears them from the processing list in one round trip.

Everything else (publishing, connections) is Kombu's own, except that a
transport the connection lets go of closes its poller at once.

Needs Redis 6.2 or later (``BLMOVE``). Each channel waits on one queue; the
daemon gives every queue its own channel. ``basic_get`` is Kombu's, and not
covered by the processing list: the daemon does not use it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

from pyramid_scheduler.faults import crash_point
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.wire.door import NOT_A_MESSAGE, DoorMessage, entry_limit, envelope, stand_in

log = get_logger(__name__)

try:
    from redis.exceptions import NoPermissionError
except ImportError:  # pragma: no cover - without redis-py this channel is never made

    class NoPermissionError(Exception):  # type: ignore[no-redef]
        pass


#: Suffix of the lists holding a queue's messages while they are handled.
PROCESSING = ":processing"


def processing_key(queue: str, consumer: str | None = None) -> str:
    """The list of *queue*'s messages being handled by *consumer*:
    ``<queue>:processing:<consumer>``. Without a consumer, the one list shared
    by the consumers of earlier builds (and by a channel given no
    ``consumer_name``): ``<queue>:processing``."""
    return f"{queue}{PROCESSING}:{consumer}" if consumer else queue + PROCESSING


def _consumer_of(key: str, queue: str) -> str | None:
    """The consumer whose processing list of *queue* is *key*, or None if
    *key* is not one (it may be the list of a queue whose name goes on with
    ``:processing:``)."""
    head = processing_key(queue) + ":"
    consumer = key[len(head) :] if key.startswith(head) else ""
    return consumer if consumer and PROCESSING + ":" not in consumer else None


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """Acks kept in this process: a message being handled waits in the
    channel's processing list of its queue, which the channel clears once it
    is settled.
    Records each settled delivery tag in :attr:`Channel.settled` (True: to be
    requeued)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.channel.settled[delivery_tag] = False
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.settled[delivery_tag] = requeue
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # Still in this consumer's processing list: put back when it
        # reconnects or, once it is dead, by another daemon (release_claims).
        self._delivered.clear()


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    _reliable_key: str | None = None
    _shared_client: Any = None
    #: Called around the delivery of the messages taken in one round trip
    #: (the daemon stores them together there); settle them inside it.
    batch: Callable[[], AbstractContextManager[Any]] = nullcontext
    #: True once Redis refused :data:`TAKE_WAITING` (an ACL without scripting).
    _no_scripts = False
    Message = DoorMessage
    #: Entries larger than this (bytes) are not read (:func:`~pyramid_scheduler.wire.door.envelope`).
    max_entry_size = entry_limit(256 * 1024)
    #: The name of the consumer whose processing lists this channel moves
    #: messages to (the daemon's owner name); None: the shared list of
    #: earlier builds.
    consumer_name: str | None = None
    #: How many messages the consumer can start soon (set by the daemon's
    #: consumer; None: as many as the prefetch count allows).
    room: Callable[[], int] | None = None
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,  # type: ignore[assignment]
        "max_entry_size",
        "consumer_name",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tag -> requeue, for the messages acked or rejected and
        #: not yet cleared from the processing list.
        self.settled: dict[str, bool] = {}

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

    def raw_key(self, key: str) -> str:
        """*key* with ``global_keyprefix``, for the commands Kombu's client
        does not prefix (``BLMOVE``, ``LMOVE``, ``LREM``, ``SCAN``)."""
        return self.global_keyprefix + key if self.global_keyprefix else key

    def processing(self, queue: str) -> str:
        """This channel's processing list of *queue* (without the global prefix)."""
        return processing_key(queue, self.consumer_name)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]
        source, target = self.raw_key(queue), self.raw_key(self.processing(queue))
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
            if self._closing or queue not in self.connection._callbacks:
                # Read as the channel closes, its consumer gone: back to the
                # head of the queue, where it was.
                self._give_back(queue, item)
                return True
            items = [item] + self._take_more(queue)
            payloads = [self._envelope(raw, queue) for raw in items]
            self._shrink(queue, items, payloads)
            # The consumer's callback runs in here: each message is handled
            # (acked, rejected or requeued) when the batch ends.
            try:
                with self.batch():
                    for index, raw in enumerate(items):
                        try:
                            self.connection._deliver(payloads[index], queue)
                        except Exception as exc:
                            if payloads[index]["content-type"] == NOT_A_MESSAGE:
                                raise
                            # Kombu could not read it as a message: refused whole.
                            self.qos._delivered.pop(payloads[index]["properties"]["delivery_tag"], None)
                            payloads[index] = stand_in(
                                raw, queue, f"Kombu could not read the message ({type(exc).__name__}: {exc})"[:500]
                            )
                            self.connection._deliver(payloads[index], queue)
            finally:
                self._clear(queue, items, payloads)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _envelope(self, raw: bytes, queue: str) -> dict[str, Any]:
        if raw.startswith(_TOO_LARGE):
            return stand_in(
                raw,
                queue,
                f"{raw.decode('ascii', 'replace')[:200]} (above the limit of "
                f"{self.max_entry_size} bytes: scheduler.max_message_size in "
                "base64, and its envelope); not read",
            )
        return envelope(raw, queue, self.max_entry_size)

    def _shrink(self, queue: str, items: list[bytes], payloads: list[dict[str, Any]]) -> None:
        """Replace, in *queue*'s processing list and in *items*, each entry
        too large to read by its stand-in (which the consumer refuses), so
        that a batch of them does not hold prefetch count × their size."""
        large = [index for index, raw in enumerate(items) if len(raw) > self.max_entry_size]
        if not large:
            return
        target = self.raw_key(self.processing(queue))
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            for index in large:
                small = dumps(payloads[index]).encode("utf-8")
                pipe.lpush(self.processing(queue), small)  # Kombu's client prefixes LPUSH's key itself
                pipe.lrem(target, 1, items[index])
                items[index] = small
            pipe.execute()

    def _take_more(self, queue: str) -> list[bytes]:
        """Up to prefetch count - 1 more messages already waiting in *queue*,
        moved to its processing list by one command (:data:`TAKE_WAITING`)."""
        more = (self.qos.prefetch_count or 1) - 1
        if self.room is not None:
            more = min(more, self.room() - 1)
        if more <= 0:
            return []
        source, target = self.raw_key(queue), self.raw_key(self.processing(queue))
        with self.conn_or_acquire() as client:
            if not self._no_scripts:
                try:
                    # Kombu's client adds global_keyprefix to EVALSHA's first key only.
                    return self._take_waiting(
                        keys=[queue, target],  # type: ignore[no-any-return]
                        args=[more, self.max_entry_size, TOO_LARGE],
                        client=client,
                    )
                except NoPermissionError as exc:
                    # Nothing moved: the script was refused before it ran.
                    log.warning(
                        "Redis refuses scripts to this user (%s): taking the messages waiting "
                        "with one LMOVE each instead",
                        exc,
                    )
                    self._no_scripts = True
            pipe = client.pipeline(transaction=False)
            for _ in range(more):
                pipe.lmove(source, target, "RIGHT", "LEFT")
            return [raw for raw in pipe.execute() if raw is not None]

    @cached_property
    def _take_waiting(self) -> Any:
        with self.conn_or_acquire() as client:
            return client.register_script(TAKE_WAITING)

    def _give_back(self, queue: str, raw: bytes) -> None:
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.rpush(queue, raw)  # Kombu's client prefixes RPUSH's key itself
            pipe.lrem(self.raw_key(self.processing(queue)), 1, raw)
            pipe.execute()

    def _clear(self, queue: str, items: list[bytes], payloads: list[dict[str, Any]]) -> None:
        """Take the settled messages off *queue*'s processing list, putting
        the requeued ones back in the queue, in one ``MULTI``."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            for raw, payload in zip(items, payloads, strict=True):
                requeue = self.settled.pop(payload["properties"]["delivery_tag"], None)
                if requeue is None:
                    continue  # not settled: stays claimed until release_claims
                if requeue:
                    pipe.lpush(queue, raw)  # Kombu's client prefixes LPUSH's key itself
                pipe.lrem(self.raw_key(self.processing(queue)), 1, raw)
            if len(pipe):
                pipe.execute()


#: Moves up to ARGV[1] messages from the consuming end of the queue KEYS[1]
#: to its processing list KEYS[2], as many ``LMOVE`` would, and returns them.
#: One command however many are waiting: a pipeline of ``LMOVE`` costs each
#: of them even when the queue is empty (about 1 ms of the consumer's CPU for
#: 63 of them here, which every message paid at a low rate). An entry longer
#: than ARGV[2] bytes is replaced, there and in the reply, by
#: :data:`TOO_LARGE` with its length and SHA-1: a batch of large entries
#: never reaches the daemon's memory.
TAKE_WAITING = """
local taken = {}
local limit = tonumber(ARGV[2])
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not raw then break end
  if #raw > limit then
    raw = ARGV[3] .. #raw .. ' bytes, sha1 ' .. redis.sha1hex(raw)
    redis.call('LSET', KEYS[2], 0, raw)
  end
  taken[#taken + 1] = raw
end
return taken
"""
#: What :data:`TAKE_WAITING` leaves of an entry too large to read.
TOO_LARGE = "pyramid_scheduler: broker entry too large to read: "

_TOO_LARGE = TOO_LARGE.encode("ascii")


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


def release_claims(
    channel: Channel, queues: list[str], live: Callable[[set[str]], Collection[str]] | None = None
) -> int:
    """Put back the messages of *queues* that consumers no longer alive took
    and did not finish; return how many.

    Those are: the processing lists of the consumers that *live* does not
    answer are alive (it is given the consumers whose lists were found; every
    list is put back when *live* is None: one daemon alone on its queues),
    the shared processing list of earlier builds, and the entries of Kombu's
    ``unacked`` hash (without waiting for the visibility timeout). *live* is
    asked once the lists are found, so a consumer that started meanwhile is
    alive, not released: it has a list only once it has joined.

    Kombu's ``unacked`` hash is written only by Kombu's own Redis channel:
    this one keeps its acks in the process, so no consumer of this package
    has an entry there; and Kombu's channels, this one too, put back every
    entry older than the visibility timeout whoever wrote it. An entry is
    released whatever *live* says.

    Whatever is found there that is not what Kombu or this channel writes (a
    key of another type, an entry that is not a Kombu message) is logged and
    left alone: it must not keep the daemon from starting.
    """
    released = 0
    names = set(queues)
    with channel.conn_or_acquire() as client:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for queue in queues:
            legacy, target = channel.raw_key(processing_key(queue)), channel.raw_key(queue)
            for key in (target, legacy):
                _set_aside_unless_list(client, key)
            released += _move_back(client, legacy, target)
            pattern = _glob_escape(legacy) + ":*"
            for key in client.scan_iter(match=pattern, count=1000, _type="list"):
                consumer = _consumer_of(key.decode("utf-8", "replace"), target)
                if consumer is not None:
                    found.setdefault(consumer, []).append((target, key))
        alive = live(set(found)) if live is not None and found else ()
        for consumer, lists in found.items():
            if consumer not in alive:
                released += sum(_move_back(client, key, target) for target, key in lists)
        released += _restore_unacked(channel, client, names)
    return released


def release_consumers(channel: Channel, queues: list[str], consumers: Collection[str]) -> int:
    """Put back what *consumers* (daemons found dead) took from *queues* and
    did not finish, in their processing lists; return how many."""
    released = 0
    with channel.conn_or_acquire() as client:
        for queue in queues:
            target = channel.raw_key(queue)
            for consumer in consumers:
                released += _move_back(client, channel.raw_key(processing_key(queue, consumer)), target)
    return released


def _move_back(client: Any, source: str | bytes, target: str) -> int:
    """Move every entry of the processing list *source* back to the queue
    *target*, newest first to the consuming end, so that the oldest is taken
    first again; return how many."""
    moved = 0
    while client.lmove(source, target, "LEFT", "RIGHT") is not None:
        moved += 1
    return moved


def _glob_escape(text: str) -> str:
    """*text* matching only itself in a ``SCAN ... MATCH`` pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _restore_unacked(channel: Channel, client: Any, names: set[str]) -> int:
    """Put back the entries of Kombu's ``unacked`` hash routed to one of
    *names*; return how many."""
    released = 0
    try:
        unacked = client.hgetall(channel.unacked_key).items()
    except channel.ResponseError as exc:
        log.error("the unacked hash %r cannot be read (%s); left alone", channel.unacked_key, exc)
        return 0
    for tag, raw in unacked:
        try:
            _message, _exchange, routing_key = loads(raw.decode("utf-8"))
            if routing_key not in names:
                continue
            channel.qos.restore_by_tag(tag.decode("utf-8"), client)
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the start
            log.error(
                "unacked entry %r: not a Kombu message (%s: %s); left alone",
                tag[:80],
                type(exc).__name__,
                str(exc)[:200],
            )
            continue
        released += 1
    return released


def _set_aside_unless_list(client: Any, key: str) -> None:
    """Rename *key* to ``<key>:malformed`` (logged) if it holds anything but a
    list: Redis would refuse every command of the consumer on it."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in ("list", "none"):
        log.error("%r holds a %s, not a list of messages: renamed to %r", key, kind, f"{key}:malformed")
        client.rename(key, f"{key}:malformed")
