"""Membership: every daemon that executes, with its heartbeat (``<prefix>daemons``).

Every daemon of a queue executes. Each one has a row here, renewed every
``scheduler.lease.ttl / 3`` seconds. A row not renewed for ``ttl`` seconds has
expired; the daemon holding the queues' lease then *declares* that daemon dead
(``expires_at = 0``, only if the row is still expired at that moment: a
renewal and a declaration never both succeed). A declared row is never renewed
again: that daemon is dead for good, and exits when it finds out (its
supervisor starts a new one, under a new name). Until it is declared dead a
daemon keeps what it holds, so a lone daemon cut off from the database for a
while carries on when it is back.

The declaration is the fence of every run: a run's start is recorded only
while its daemon is not declared dead, in the same statement
(:mod:`pyramid_scheduler.store.runwrites`); and only then do the others take
over what it held: the jobs it claimed in its queues' tables
(:mod:`pyramid_scheduler.store.claims`), the runs it left started and the
jobs it took out of the tables but had not started
(:mod:`pyramid_scheduler.daemon.recovery`). So a daemon paused past its
heartbeat (SIGSTOP, a long pause, a partition from the database) and then
resumed cannot start a run the others took over.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from pyramid_scheduler.store.lease import owner_gone
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.tables import now


@dataclass
class Membership:
    """This daemon's row among the daemons that execute (see the module)."""

    ledger: Ledger
    queues: tuple[str, ...]
    owner: str
    ttl: float
    #: "2/4" under ``pscheduler --processes 4``.
    process: str = ""
    renewed_at: float = 0.0
    joined: bool = False
    #: Since when this daemon has renewed without a gap longer than ``ttl``:
    #: it declares no one dead by an expired heartbeat before it has been so
    #: for a whole ``ttl`` (after a database outage every heartbeat has
    #: expired; the others need a ttl to renew theirs too).
    steady_since: float = 0.0

    def join(self) -> None:
        """Add this daemon's row (alive for ``ttl`` seconds)."""
        table = self.ledger.daemons
        stamp = now()
        with self.ledger.engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    owner=self.owner,
                    queues=",".join(self.queues),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    process=self.process,
                    started_at=stamp,
                    heartbeat_at=stamp,
                    expires_at=stamp + self.ttl,
                )
            )
        self.renewed_at = self.steady_since = stamp
        self.joined = True

    def renew(self) -> bool:
        """Extend the row; False if this daemon was declared dead (the others
        took its work over, and it must stop)."""
        if not self.joined:
            return False
        table = self.ledger.daemons
        stamp = now()
        with self.ledger.engine.begin() as conn:
            moved = conn.execute(
                table.update()
                .where(table.c.owner == self.owner, table.c.expires_at > 0)
                .values(heartbeat_at=stamp, expires_at=stamp + self.ttl)
            ).rowcount
        if not moved:
            self.joined = False
            return False
        if stamp - self.renewed_at > self.ttl:
            self.steady_since = stamp
        self.renewed_at = stamp
        return True

    def valid(self, margin: float = 0.0) -> bool:
        """True while the last renewal is within ``ttl - margin`` seconds."""
        return self.joined and now() < self.renewed_at + self.ttl - margin

    def fresh(self) -> bool:
        """:meth:`valid` with a third of the ttl to spare: what this daemon
        needs to claim due jobs (each run is fenced again as it starts)."""
        return self.valid(self.ttl / 3)

    def leave(self) -> None:
        """Declare this daemon dead at once (a clean stop): what it held is
        taken over at the others' next look, not after ``ttl``."""
        if not self.joined:
            return
        table = self.ledger.daemons
        with self.ledger.engine.begin() as conn:
            conn.execute(table.update().where(table.c.owner == self.owner).values(expires_at=0.0))
        self.joined = False

    # -- the others ----------------------------------------------------------------------
    def members(self) -> list[dict[str, Any]]:
        """Every daemon's row, alive or not, oldest first."""
        return self.ledger.list_daemons()

    def live(self) -> set[str]:
        """The daemons not declared dead (this one included while it is not):
        what they hold is theirs."""
        return {row["owner"] for row in self.members() if row["expires_at"] > 0}

    def dead(self) -> list[str]:
        """Declare dead the daemons serving one of this daemon's queues whose
        heartbeat expired (once this one has itself renewed steadily for a
        ttl: see :attr:`steady_since`), or that were processes of this host that are gone
        (a ``kill -9`` is known at once, not ``ttl`` seconds later); return
        every daemon of these queues declared dead and not yet forgotten.
        Called by the holder of the queues' lease only."""
        table = self.ledger.daemons
        stamp = now()
        mine = set(self.queues)
        rows = [row for row in self.members() if row["owner"] != self.owner and set(row["queues"].split(",")) & mine]
        steady = stamp - self.steady_since >= self.ttl
        expired = [row["owner"] for row in rows if 0 < row["expires_at"] <= stamp] if steady else []
        gone = [row["owner"] for row in rows if row["expires_at"] > stamp and owner_gone(row["owner"])]
        if expired or gone:
            with self.ledger.engine.begin() as conn:
                if expired:  # still expired now: a renewal in between wins
                    conn.execute(
                        table.update()
                        .where(table.c.owner.in_(expired), table.c.expires_at > 0, table.c.expires_at <= stamp)
                        .values(expires_at=0.0)
                    )
                if gone:
                    conn.execute(table.update().where(table.c.owner.in_(gone)).values(expires_at=0.0))
        owners = {row["owner"] for row in rows}
        return sorted(row["owner"] for row in self.members() if row["owner"] in owners and row["expires_at"] <= 0)

    def forget(self, owners: list[str]) -> None:
        """Delete the rows of dead daemons whose work was taken over."""
        if not owners:
            return
        table = self.ledger.daemons
        with self.ledger.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.owner.in_(owners), table.c.expires_at <= 0))
