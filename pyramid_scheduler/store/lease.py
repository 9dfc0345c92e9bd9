"""The lease: which daemon executes each queue (``<prefix>leases``).

One row per queue holds its owner, an epoch bumped at every change of owner,
and an expiry; see :class:`Lease`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import sqlalchemy as sa

from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.tables import now


def owner_gone(owner: str) -> bool:
    """True if *owner* ("host:pid:nonce") was a process on this host that is gone,
    so a daemon restarted after ``kill -9`` need not wait for the lease to expire."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class _HeldError(Exception):
    """Another daemon holds a queue's lease (rolls the transaction back)."""


@dataclass
class Lease:
    """Which daemon executes a set of queues.

    A lease row per queue holds its owner, an epoch bumped at every change of
    owner, and an expiry. The holder renews it every ``ttl / 3`` seconds; a
    standby takes it over once it has expired. Before each run the holder
    checks that its last renewal is still within ``ttl`` (:meth:`valid`), so a
    process that was paused past its lease does not run jobs next to the new
    holder.
    """

    ledger: Ledger
    queues: tuple[str, ...]
    owner: str
    ttl: float
    epochs: dict[str, int] | None = None
    renewed_at: float = 0.0

    def try_acquire(self) -> bool:
        """Take every queue's lease, or none. True when all are held."""
        table = self.ledger.leases
        stamp = now()
        epochs: dict[str, int] = {}
        try:
            with self.ledger.engine.begin() as conn:
                for queue in sorted(self.queues):
                    row = conn.execute(sa.select(table).where(table.c.queue == queue)).first()
                    if row is None:
                        conn.execute(
                            table.insert().values(queue=queue, owner=self.owner, epoch=1, expires_at=stamp + self.ttl)
                        )
                        epochs[queue] = 1
                        continue
                    if row.owner != self.owner and row.expires_at > stamp and not owner_gone(row.owner):
                        raise _HeldError(queue)
                    epoch = row.epoch if row.owner == self.owner else row.epoch + 1
                    moved = conn.execute(
                        table.update()
                        .where(table.c.queue == queue, table.c.epoch == row.epoch, table.c.owner == row.owner)
                        .values(owner=self.owner, epoch=epoch, expires_at=stamp + self.ttl)
                    ).rowcount
                    if not moved:
                        raise _HeldError(queue)
                    epochs[queue] = epoch
        except (_HeldError, sa.exc.IntegrityError):
            return False
        self.epochs = epochs
        self.renewed_at = stamp
        return True

    def renew(self) -> bool:
        """Extend the lease; False if another daemon holds it now."""
        if not self.epochs:
            return False
        table = self.ledger.leases
        stamp = now()
        with self.ledger.engine.begin() as conn:
            for queue, epoch in self.epochs.items():
                moved = conn.execute(
                    table.update()
                    .where(table.c.queue == queue, table.c.owner == self.owner, table.c.epoch == epoch)
                    .values(expires_at=stamp + self.ttl)
                ).rowcount
                if not moved:
                    return False
        self.renewed_at = stamp
        return True

    def valid(self, margin: float = 0.0) -> bool:
        """True while the last renewal is within ``ttl - margin`` seconds."""
        return bool(self.epochs) and now() < self.renewed_at + self.ttl - margin

    def fresh(self) -> bool:
        """:meth:`valid` with a third of the ttl to spare: what APScheduler
        needs before it may take due jobs from the store (a run it takes is
        checked again, with :meth:`valid`, just before it starts)."""
        return self.valid(self.ttl / 3)

    def release(self) -> None:
        if not self.epochs:
            return
        table = self.ledger.leases
        with self.ledger.engine.begin() as conn:
            for queue, epoch in self.epochs.items():
                conn.execute(
                    table.update()
                    .where(table.c.queue == queue, table.c.owner == self.owner, table.c.epoch == epoch)
                    .values(expires_at=0.0)
                )
        self.epochs = None
