"""Job functions of the sample application, and the oracle they write to.

The oracle is an SQLite file (its path is each job's first argument) shared by
the test process and the daemons: a row per run with the job's tag, the time,
the process id and the ``sampleapp.marker`` setting read from the *current*
registry (``None`` if the application's registry was not current).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from pyramid.threadlocal import get_current_registry

SCHEMA = """
create table if not exists runs (
    seq integer primary key autoincrement,
    tag text not null,
    phase text not null,
    at real not null,
    pid integer not null,
    thread text not null,
    marker text
);
create table if not exists events (
    seq integer primary key autoincrement,
    type text not null,
    job_id text,
    message text,
    at real not null,
    pid integer not null
);
"""


def connect(oracle: str) -> sqlite3.Connection:
    conn = sqlite3.connect(oracle, timeout=30, isolation_level=None)
    conn.execute("pragma busy_timeout = 30000")
    conn.executescript(SCHEMA)
    return conn


def _write(oracle: str, sql: str, params: tuple[Any, ...]) -> None:
    conn = connect(oracle)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def _marker() -> Any:
    settings = getattr(get_current_registry(), "settings", None) or {}
    return settings.get("sampleapp.marker")


def _log_run(oracle: str, tag: str, phase: str) -> None:
    _write(
        oracle,
        "insert into runs (tag, phase, at, pid, thread, marker) values (?, ?, ?, ?, ?, ?)",
        (tag, phase, time.time(), os.getpid(), threading.current_thread().name, _marker()),
    )


def record(oracle: str, tag: str) -> dict[str, Any]:
    """Record one run of *tag*."""
    _log_run(oracle, tag, "run")
    return {"tag": tag, "pid": os.getpid(), "marker": _marker()}


def noop(n: int) -> int:
    """Do nothing (the soak test counts runs in the ledger)."""
    return n


def slow(oracle: str, tag: str, seconds: float) -> str:
    """Record a start, take *seconds*, record the end."""
    _log_run(oracle, tag, "start")
    time.sleep(seconds)
    _log_run(oracle, tag, "end")
    return tag


def fail(oracle: str, tag: str) -> None:
    """Record the run, then raise."""
    _log_run(oracle, tag, "run")
    raise RuntimeError(f"sampleapp job {tag} fails on purpose")


def record_event(event: Any, oracle: str) -> None:
    """Scheduler listener: one row per event."""
    _write(
        oracle,
        "insert into events (type, job_id, message, at, pid) values (?, ?, ?, ?, ?)",
        (event.type, event.get("job_id"), event.get("message"), time.time(), os.getpid()),
    )


def runs(oracle: str, tag: str | None = None) -> list[dict[str, Any]]:
    """The recorded runs (of *tag*), oldest first; [] before any run."""
    if not os.path.exists(oracle):
        return []
    conn = connect(oracle)
    conn.row_factory = sqlite3.Row
    try:
        if tag is None:
            rows = conn.execute("select * from runs order by seq").fetchall()
        else:
            rows = conn.execute("select * from runs where tag = ? order by seq", (tag,)).fetchall()
    finally:
        conn.close()
    return [dict(row) for row in rows]


def events(oracle: str) -> list[dict[str, Any]]:
    """The recorded events, in the order the listener received them."""
    if not os.path.exists(oracle):
        return []
    conn = connect(oracle)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("select * from events order by seq").fetchall()
    finally:
        conn.close()
    return [dict(row) for row in rows]
