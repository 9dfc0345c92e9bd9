"""Chains and groups in the job store: what a step's end makes of the rest.

Called by the run ledger's writes (:meth:`pyramid_scheduler.store.runwrites.RunWrites.finish_run`)
inside the very transaction that records a step's final outcome, and by a
cancel (:meth:`pyramid_scheduler.store.ledger.Ledger.set_status`), so that the
next step exists exactly when the previous one's success does: a daemon
killed at any point leaves either both or neither, and the next step is a
job like any other (stored ``scheduled``, taken by this daemon as its
``owner``), which the recovery of a dead daemon schedules again
(:meth:`pyramid_scheduler.store.ledger.Ledger.orphans`), with the same run
key, so it runs once.

* A chain's step ends ``done``: its next step is recorded with the result as
  its first argument, and handed over after the commit
  (:attr:`Flows.handed`). It ends otherwise (``failed`` after its retries,
  ``missed``, ``interrupted``, ``canceled``): every later step is recorded
  ``canceled`` with the reason.
* A group's member ends: it locks the group's row in ``<prefix>flows`` (made
  by the first member that ends), so that members ending together on
  several daemons are told one at a time; the one that finds every member
  ended makes the ``then`` step -- with the results in the members' order
  when all are ``done``, else recorded ``canceled`` naming the first member
  that was not.

The flow itself travels in each step's request (:mod:`pyramid_scheduler.wire.flows`),
checked at the door as every message is; it is checked again here, since a
row of the job store is read back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.tables import FINAL, Tables
from pyramid_scheduler.wire.flows import encoded_size, flow_of, flow_problem, next_request
from pyramid_scheduler.wire.messages import new_id

log = get_logger(__name__)

#: Most characters of a step's error quoted in the reason its followers are canceled.
REASON_QUOTE = 300


class Flows:
    """What the end of a step of a chain or group makes (see the module).

    :param job_row: the ledger's row of a new job from its wire request.
    """

    def __init__(self, tables: Tables, job_row: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.tables = tables
        self.job_row = job_row
        #: The largest request a step may become with the previous result in
        #: it (``scheduler.max_message_size``, set by the daemon).
        self.max_size = 1024 * 1024
        #: When a step made now is due (epoch seconds): the daemon's clock.
        self.due: Callable[[], float] = tables.now
        #: Told the requests of the steps made, once their transaction has
        #: committed: the daemon hands them to its scheduler. None: nothing
        #: hands them over (they wait for a daemon's recovery).
        self.handed: Callable[[list[dict[str, Any]]], None] | None = None

    def after_end(self, conn: Connection, job_id: str) -> list[dict[str, Any]]:
        """In *conn*'s transaction, after *job_id*'s final status was written:
        make what its end makes of its flow; return the requests of the steps
        to hand over (none if the job is no step, or this was done before)."""
        jobs = self.tables.jobs
        row = conn.execute(
            sa.select(jobs.c.parent, jobs.c.status, jobs.c.request, jobs.c.result, jobs.c.error).where(
                jobs.c.id == job_id
            )
        ).first()
        if row is None or row.parent is None or row.status not in FINAL:
            return []
        request = json.loads(row.request)
        flow = flow_of(request)
        problem = flow_problem(flow)
        if flow is None or problem:
            log.error("job %s: its flow cannot be read (%s); its followers are not made", job_id, problem)
            return []
        if flow["kind"] == "chain":
            return self._chain(conn, job_id, flow, row)
        if flow["kind"] == "group":
            return self._group(conn, flow)
        return []

    # -- chains -------------------------------------------------------------------------
    def _chain(self, conn: Connection, job_id: str, flow: dict[str, Any], row: Any) -> list[dict[str, Any]]:
        steps = flow["next"]
        if not steps or self._exists(conn, steps[0]["id"]):
            return []  # the last step, or its follower made already
        position = flow["position"] + 1
        if row.status != "done":
            reason = f"chain {flow['id']}: step {flow['position']} ({job_id}) ended {row.status}{_quote(row.error)}"
            self._cancel_rest(conn, flow["id"], steps, position, reason)
            return []
        result = json.loads(row.result) if row.result is not None else None
        following = {"id": flow["id"], "kind": "chain", "position": position, "next": steps[1:]}
        return self._make(conn, steps[0], result, following, position, steps[1:])

    def _cancel_rest(
        self, conn: Connection, flow_id: str, steps: list[dict[str, Any]], position: int, reason: str
    ) -> None:
        """Record *steps* (from *position* on) ``canceled`` with *reason*."""
        for offset, step in enumerate(steps):
            if self._exists(conn, step["id"]):
                continue
            flow = {"id": flow_id, "kind": "chain", "position": position + offset, "next": steps[offset + 1 :]}
            request = next_request(step, None, flow, new_id(), self.tables.now())
            self._insert(conn, request, flow_id, position + offset, status="canceled", error=reason)
        log.warning("%s; %d later step(s) canceled", reason, len(steps))

    def _make(
        self,
        conn: Connection,
        step: dict[str, Any],
        first: Any,
        flow: dict[str, Any],
        position: int,
        rest: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Record *step* with *first* as its first argument and hand it over;
        if its request would be too large, record it and *rest* canceled."""
        request = next_request(step, first, flow, new_id(), self.due())
        size = encoded_size(request)
        if size > self.max_size:
            reason = (
                f"{flow['kind']} {flow['id']}: step {position} ({step['id']}) would be a message of {size} "
                f"bytes with the result it takes, above scheduler.max_message_size ({self.max_size})"
            )
            self._cancel_rest(conn, flow["id"], [step, *rest], position, reason)
            return []
        self._insert(conn, request, flow["id"], position)
        return [request]

    def _insert(
        self,
        conn: Connection,
        request: dict[str, Any],
        parent: str,
        position: int,
        status: str = "scheduled",
        error: str | None = None,
    ) -> None:
        row = self.job_row(request)
        row.update(parent=parent, position=position, status=status, error=error)
        conn.execute(self.tables.jobs.insert(), row)

    def _exists(self, conn: Connection, job_id: str) -> bool:
        jobs = self.tables.jobs
        return conn.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None

    # -- groups -------------------------------------------------------------------------
    def _group(self, conn: Connection, flow: dict[str, Any]) -> list[dict[str, Any]]:
        group_id, size = flow["id"], flow["size"]
        flows, jobs = self.tables.flows, self.tables.jobs
        self._lock_group(conn, group_id, size)
        state = conn.execute(sa.select(flows.c.status).where(flows.c.id == group_id)).scalar()
        members = conn.execute(
            sa.select(jobs.c.id, jobs.c.position, jobs.c.status, jobs.c.result, jobs.c.error)
            .where(jobs.c.parent == group_id, jobs.c.position < size, jobs.c.status.in_(FINAL))
            .order_by(jobs.c.position)
        ).all()
        if state != "running" or len({member.position for member in members}) < size:
            return []
        then = flow["then"]
        failed = next((member for member in members if member.status != "done"), None)
        stamp = self.tables.now()
        conn.execute(
            flows.update()
            .where(flows.c.id == group_id)
            .values(status="done" if failed is None else "canceled", updated_at=stamp)
        )
        if then is None or self._exists(conn, then["id"]):
            return []
        then_flow = {"id": group_id, "kind": "then", "position": size}
        if failed is not None:
            reason = (
                f"group {group_id}: member {failed.position} ({failed.id}) ended {failed.status}{_quote(failed.error)}"
            )
            request = next_request(then, None, then_flow, new_id(), stamp)
            self._insert(conn, request, group_id, size, status="canceled", error=reason)
            log.warning("%s; its then step %s canceled", reason, then["id"])
            return []
        results = [json.loads(member.result) if member.result is not None else None for member in members]
        return self._make(conn, then, results, then_flow, size, [])

    def _lock_group(self, conn: Connection, group_id: str, size: int) -> None:
        """Make the group's row if no member did yet, then lock it (an
        ``UPDATE``) until *conn*'s transaction ends."""
        flows, stamp = self.tables.flows, self.tables.now()
        values = {"id": group_id, "kind": "group", "size": size, "status": "running", "created_at": stamp}
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            insert = (postgresql if dialect == "postgresql" else sqlite).insert(flows)
            conn.execute(insert.values(**values, updated_at=stamp).on_conflict_do_nothing(index_elements=["id"]))
        elif conn.execute(sa.select(flows.c.id).where(flows.c.id == group_id)).first() is None:
            conn.execute(flows.insert().values(**values, updated_at=stamp))
        conn.execute(flows.update().where(flows.c.id == group_id).values(updated_at=stamp))


def _quote(error: str | None) -> str:
    """The last line of a step's *error* (a traceback's exception), for a reason."""
    if not error:
        return ""
    last = error.strip().splitlines()[-1] if error.strip() else ""
    return f": {last[:REASON_QUOTE]}" if last else ""
