"""A Kombu transport on a SQL database: the embedded default broker.

Used when ``scheduler.broker.url`` is a SQLAlchemy URL (``sqlite:///...``,
``postgresql://...``) or one of 0.3.4's ``sqla+``/``kombu.transport.sqlalchemy``
forms. Kombu's own SQLAlchemy transport is not used: it swallows
``OperationalError`` on publish (a locked SQLite file drops the message),
keeps delivered-but-unacked messages only in process memory (``kill -9``
loses them) and never deletes consumed rows. This one:

* raises on every database error, so ``add_*_job`` fails loudly;
* *claims* a row for one consumer: sets ``visible_at`` to now + the
  visibility timeout and ``claimed_by`` to the consumer's name (the
  ``consumer_name`` transport option: the daemon's owner name, as in its
  heartbeat row);
* deletes the row on ack and on reject, and makes it visible again on requeue
  or when the channel closes with unacked messages;
* gives back the claims of consumers that are dead (:func:`release_claims`,
  :func:`release_consumers`), as soon as that is known. The visibility
  timeout is only a backstop: a claim still standing then is taken again,
  whoever holds it.

Transport options: ``url`` (the SQLAlchemy URL), ``visibility_timeout`` (seconds, default 300),
``polling_interval`` (seconds between empty polls, default 0.02), ``max_entry_size`` (bytes: a
larger row is refused unread, see :mod:`pyramid_scheduler.wire.door`), ``consumer_name``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from queue import Empty
from typing import Any

import sqlalchemy as sa
from kombu.transport import virtual
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.db import SQLITE_BUSY_TIMEOUT, create_db_engine, create_tables
from pyramid_scheduler.wire.door import DoorMessage, entry_limit, envelope

metadata = sa.MetaData()
messages = sa.Table(
    "pyramid_scheduler_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(200), nullable=False),
    sa.Column("delivery_tag", sa.String(64), nullable=False),
    sa.Column("visible_at", sa.Float, nullable=False, default=0.0),
    sa.Column("payload", sa.Text, nullable=False),
    # The consumer holding the claim (None: a consumer given no name, or one
    # of a build without this column).
    sa.Column("claimed_by", sa.String(200)),
    sa.Index("ix_pyramid_scheduler_messages_queue", "queue", "visible_at", "id"),
    sa.Index("ix_pyramid_scheduler_messages_tag", "delivery_tag"),
)

# The statements of every message, built once (SQLAlchemy then skips building
# and caching them at each call, most of the CPU of a small statement).
_param = sa.bindparam
_INSERT = messages.insert()
_NEXT = (
    sa.select(messages.c.id, messages.c.visible_at, messages.c.delivery_tag, messages.c.payload)
    .where(messages.c.queue == _param("p_queue"), messages.c.visible_at <= _param("p_now"))
    .order_by(messages.c.id)
    .limit(1)
)
_CLAIM = (
    messages.update()
    .where(messages.c.id == _param("p_id"), messages.c.visible_at == _param("p_seen"))
    .values(visible_at=_param("p_until"), claimed_by=_param("p_by"))
)
_FORGET = messages.delete().where(messages.c.delivery_tag == _param("p_tag"))

_engines: dict[tuple[str, float, bool], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str, busy_timeout: float = SQLITE_BUSY_TIMEOUT, wal: bool = True) -> Engine:
    """One engine (and one table check) per URL, lock timeout and journal
    choice per process."""
    key = (url, busy_timeout, wal)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_db_engine(url, busy_timeout=busy_timeout, wal=wal)
            create_tables(engine, metadata)
            _engines[key] = engine
        return engine


def release_claims(
    url: str, queues: list[str], wal: bool = True, live: Callable[[set[str]], Collection[str]] | None = None
) -> int:
    """Make the claimed, unacked messages of *queues* whose consumer *live*
    does not answer is alive visible again (it is given the consumers whose
    claims were found; every claim is released when *live* is None: one
    daemon alone on its queues); return how many.

    Claims without a consumer's name (a build without the ``claimed_by``
    column, a consumer given no name) are released whatever *live* says.
    *live* is asked once the claims are read, so a consumer that started
    meanwhile, and may have claimed since, is alive, not released. They need
    not wait out the visibility timeout. (A consumer found dead
    while it was only paused may still finish a message released here, which
    is then handled twice: the job store absorbs a duplicate by job id.)
    """
    engine = engine_for(url, wal=wal)
    claimed = sa.and_(messages.c.queue.in_(queues), messages.c.visible_at > 0)
    if live is not None:
        with engine.connect() as conn:
            found = {
                name
                for (name,) in conn.execute(sa.select(messages.c.claimed_by).where(claimed).distinct())
                if name is not None
            }
        alive = live(set(found)) if found else ()
        dead = [name for name in found if name not in alive]
        claimed = sa.and_(claimed, sa.or_(messages.c.claimed_by.is_(None), messages.c.claimed_by.in_(dead)))
    with engine.begin() as conn:
        return int(conn.execute(messages.update().where(claimed).values(visible_at=0.0, claimed_by=None)).rowcount)


def release_consumers(url: str, queues: list[str], consumers: Collection[str], wal: bool = True) -> int:
    """Make the messages of *queues* claimed by *consumers* (daemons found
    dead) and not acked visible again; return how many."""
    engine = engine_for(url, wal=wal)
    with engine.begin() as conn:
        return int(
            conn.execute(
                messages.update()
                .where(
                    messages.c.queue.in_(queues),
                    messages.c.visible_at > 0,
                    messages.c.claimed_by.in_(list(consumers)),
                )
                .values(visible_at=0.0, claimed_by=None)
            ).rowcount
        )


class Channel(virtual.Channel):
    """Virtual channel whose queues are rows of ``pyramid_scheduler_messages``."""

    visibility_timeout = 300.0
    Message = DoorMessage
    #: Rows whose payload is larger than this (bytes) are not read.
    max_entry_size = entry_limit(256 * 1024)
    #: The name the claims of this channel's consumer are made under.
    consumer_name: str | None = None
    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "visibility_timeout",  # type: ignore[assignment]
        "max_entry_size",
        "consumer_name",
    )

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        client = self.connection.client
        options = client.transport_options
        # A locked SQLite file fails a publish within scheduler.broker.timeout.
        self.engine = engine_for(
            options.get("url") or client.hostname,
            float(options.get("busy_timeout", SQLITE_BUSY_TIMEOUT)),
            bool(options.get("wal", True)),
        )

    # -- publish ----------------------------------------------------------------------
    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        tag = message["properties"]["delivery_tag"]
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT, {"queue": queue, "delivery_tag": tag, "visible_at": 0.0, "payload": json.dumps(message)}
            )

    # -- consume ----------------------------------------------------------------------
    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as conn:
            while True:
                row = conn.execute(_NEXT, {"p_queue": queue, "p_now": now}).first()
                if row is None:
                    raise Empty()
                claimed = conn.execute(
                    _CLAIM,
                    {
                        "p_id": row.id,
                        "p_seen": row.visible_at,
                        "p_until": now + self.visibility_timeout,
                        "p_by": self.consumer_name,
                    },
                ).rowcount
                if claimed:
                    # Read through the door: a row too large or not a Kombu
                    # message (written by other means) becomes a stand-in.
                    message = envelope(row.payload, queue, self.max_entry_size, row.delivery_tag)
                    if row.visible_at:  # claimed before: a consumer died or requeued it
                        message["properties"]["delivery_info"]["redelivered"] = True
                    return message

    def _size(self, queue: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(messages).where(messages.c.queue == queue)
                ).scalar_one()
            )

    def _purge(self, queue: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(messages.delete().where(messages.c.queue == queue)).rowcount)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._purge(queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass  # queues are rows; the table is made by engine_for()

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    # -- settle -----------------------------------------------------------------------
    def _forget(self, delivery_tag: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(_FORGET, {"p_tag": delivery_tag})

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        self._forget(delivery_tag)
        super().basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:
            self._forget(delivery_tag)
        super().basic_reject(delivery_tag, requeue)

    def _restore(self, message: Any) -> None:
        # The row is still there (claimed): make it visible again rather than
        # inserting a copy, as the base class would.
        with self.engine.begin() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.delivery_tag == message.delivery_tag)
                .values(visible_at=0.0, claimed_by=None)
            )


class Transport(virtual.Transport):
    """Use as ``kombu.Connection("sql://", transport=Transport,
    transport_options={"url": sqlalchemy_url})``.

    The SQLAlchemy URL travels in the transport options because Kombu reads a
    ``+`` in a URL's scheme (``postgresql+psycopg://``) as a transport prefix.
    """

    Channel = Channel
    polling_interval = 0.02
    can_parse_url = True
    default_port = 0  # type: ignore[assignment]
    driver_type = "sql"
    driver_name = "sqlalchemy"
    connection_errors = (*virtual.Transport.connection_errors, sa.exc.OperationalError)  # type: ignore[assignment]
    channel_errors = (*virtual.Transport.channel_errors, sa.exc.OperationalError)  # type: ignore[assignment]

    def driver_version(self) -> str:
        return str(sa.__version__)
