"""Helpers of the store's tests."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa


def job_request(job_id: str, queue: str = "jobs", mid: str | None = None, **fields: Any) -> dict[str, Any]:
    """A job's wire request, as the door admits it."""
    return {
        "v": 1,
        "op": "add",
        "id": job_id,
        "queue": queue,
        "func": "integration.sampleapp.jobs:noop",
        "args": [1],
        "kwargs": {},
        "trigger": {"type": "now"},
        "options": {},
        "mid": mid or f"m-{job_id}",
        **fields,
    }


def statement_threads(engine: sa.Engine) -> list[str]:
    """The name of the thread that ran each ``INSERT`` or ``UPDATE`` (maybe in a ``WITH``) on
    *engine*'s database, in order."""
    names: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(("INSERT", "UPDATE", "WITH")):
            names.append(threading.current_thread().name)

    sa.event.listen(engine, "before_cursor_execute", seen)
    return names
