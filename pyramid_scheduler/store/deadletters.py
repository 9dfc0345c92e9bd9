"""Dead letters: the messages the daemons refused, with why.

A base of :class:`~pyramid_scheduler.store.reports.Reports` (and so of the
:class:`~pyramid_scheduler.store.ledger.Ledger`). The daemon's consumer
writes them (:meth:`DeadLetters.dead_letter_many`) with what
:func:`~pyramid_scheduler.wire.door.kept_for_replay` keeps to replay them;
the operators' commands, the dashboard, the metrics and
:meth:`~pyramid_scheduler.web.manage.JobManagement.replay_dead_letter` read
and delete them. Every value is bounded before it is written: the reason,
the queue name, the first :data:`DEAD_LETTER_PREFIX` bytes of the body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pyramid_scheduler.store.tables import Tables


class DeadLetters(Tables):
    """The ``<prefix>dead_letters`` table's writes and reads."""

    engine: Engine
    now: Callable[[], float]
    #: Dead letters dropped to keep ``scheduler.dead_letters.max``, by this process.
    dead_letters_dropped = 0

    def dead_letter_many(self, letters: list[tuple[Any, ...]], keep: int | None = None) -> int:
        """Write the dead letters *letters* ((queue, reason, body), or
        (queue, reason, body, message, signed) with what replaying needs: see
        :func:`~pyramid_scheduler.wire.door.kept_for_replay`) in one
        transaction: of each body its first :data:`DEAD_LETTER_PREFIX` bytes,
        its size and SHA-256. Then, if more than *keep* dead letters are
        kept, the oldest beyond that are dropped: return how many (counted in
        :attr:`dead_letters_dropped`)."""
        stamp = self.now()
        rows = []
        for queue, reason, body, *replay in letters:
            message, signed = (*replay, None, None)[:2]
            rows.append(
                dict(
                    queue=_storable(queue, 200),
                    received_at=stamp,
                    reason=_storable(reason, 2000),
                    message=message if message is None or _storable(message, len(message)) == message else None,
                    signed=signed,
                    **_letter_body(body),
                )
            )
        table = self.dead_letters
        dropped = 0
        with self.engine.begin() as conn:
            conn.execute(table.insert(), rows)
            if keep is not None:
                newest = sa.select(table.c.id).order_by(table.c.id.desc()).offset(keep).limit(1).scalar_subquery()
                dropped = int(conn.execute(table.delete().where(table.c.id <= newest)).rowcount or 0)
        self.dead_letters_dropped += dropped
        return dropped

    def list_dead_letters(self, limit: int, queue: str | None = None) -> list[dict[str, Any]]:
        """The latest *limit* dead letters (of *queue*), oldest first; each
        says whether it can be replayed (``replayable``) rather than holding
        the whole message (:meth:`get_dead_letter` has it)."""
        table = self.dead_letters
        columns = [column for column in table.c if column.name != "message"]
        replayable = table.c.message.is_not(None).label("replayable")
        query = sa.select(*columns, replayable).order_by(table.c.id.desc()).limit(limit)
        if queue is not None:
            query = query.where(table.c.queue == queue)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in reversed(conn.execute(query).all())]

    def count_dead_letters(self) -> int:
        """How many dead letters the job store keeps (:mod:`pyramid_scheduler.metrics`)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.dead_letters)).scalar_one())

    def get_dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        table = self.dead_letters
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == letter_id)).first()
        return None if row is None else dict(row._mapping)

    def delete_dead_letter(self, letter_id: int) -> bool:
        """Forget one dead letter; True if there was one."""
        table = self.dead_letters
        with self.engine.begin() as conn:
            return bool(conn.execute(table.delete().where(table.c.id == letter_id)).rowcount)


#: Bytes of a refused message's body a dead letter keeps.
DEAD_LETTER_PREFIX = 4096


def _storable(text: str, longest: int) -> str:
    """*text* cut to *longest* characters, with what no database column
    takes (NUL, lone surrogates) escaped."""
    text = text[:longest]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _letter_body(body: Any) -> dict[str, Any]:
    """A dead letter's ``body`` (prefix), ``size`` and ``sha256``."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    elif not isinstance(body, (bytes, bytearray)):
        try:
            body = json.dumps(body).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            body = repr(body).encode("utf-8", "surrogatepass")
    data = bytes(body)
    text = data[:DEAD_LETTER_PREFIX].decode("utf-8", "backslashreplace")
    return {
        "body": _storable(text, DEAD_LETTER_PREFIX * 4),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
