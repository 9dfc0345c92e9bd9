"""A Kombu transport on a SQL database: the embedded default broker.

Used when ``scheduler.broker.url`` is a SQLAlchemy URL (``sqlite:///...``,
``postgresql://...``) or one of 0.3.4's ``sqla+``/``kombu.transport.sqlalchemy``
forms. Kombu's own SQLAlchemy transport is not used: it swallows
``OperationalError`` on publish (a locked SQLite file drops the message),
keeps delivered-but-unacked messages only in process memory (``kill -9``
loses them) and never deletes consumed rows. This one:

* raises on every database error, so ``add_*_job`` fails loudly;
* *claims* a row by setting ``visible_at`` to now + the visibility timeout, so
  a consumer that dies leaves the row to be claimed again once the timeout
  passes;
* deletes the row on ack and on reject, and makes it visible again on requeue
  or when the channel closes with unacked messages.

Transport options: ``url`` (the SQLAlchemy URL), ``visibility_timeout`` (seconds, default 60),
``polling_interval`` (seconds between empty polls, default 0.02), ``max_entry_size`` (bytes: a
larger row is refused unread, see :mod:`pyramid_scheduler.wire.door`).
"""

from __future__ import annotations

import json
import threading
import time
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
    .values(visible_at=_param("p_until"))
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


def release_claims(url: str, queues: list[str], wal: bool = True) -> int:
    """Make every claimed, unacked message of *queues* visible again; return
    how many.

    The daemon calls this when it takes the lease on its queues: only the
    lease holder consumes them, so a claim still standing belongs to an
    earlier holder that crashed or lost its lease, and need not wait out the
    visibility timeout. (A message that holder is still finishing may be seen
    twice; the job store absorbs the duplicate by job id.)
    """
    engine = engine_for(url, wal=wal)
    with engine.begin() as conn:
        return int(
            conn.execute(
                messages.update().where(messages.c.queue.in_(queues), messages.c.visible_at > 0).values(visible_at=0.0)
            ).rowcount
        )


class Channel(virtual.Channel):
    """Virtual channel whose queues are rows of ``pyramid_scheduler_messages``."""

    visibility_timeout = 60.0
    Message = DoorMessage
    #: Rows whose payload is larger than this (bytes) are not read.
    max_entry_size = entry_limit(256 * 1024)
    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "visibility_timeout",  # type: ignore[assignment]
        "max_entry_size",
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
                    _CLAIM, {"p_id": row.id, "p_seen": row.visible_at, "p_until": now + self.visibility_timeout}
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
                messages.update().where(messages.c.delivery_tag == message.delivery_tag).values(visible_at=0.0)
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
