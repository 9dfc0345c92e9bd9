"""The bench's jobs: record when they started, nothing else.

Every system under test (pyramid_scheduler, Celery, the raw broker loops)
runs :func:`record`, which appends ``tag sent started`` to a file with one
``O_APPEND`` write (atomic for a short line, so concurrent runs do not mix).
``sent`` is the ``time.time()`` the producer took just before enqueueing (or
the date the job was due); ``started`` is ``time.time()`` as the job starts.
All processes are on one machine, so their clocks are the same clock.
"""

from __future__ import annotations

import os
import time


def record(path: str, tag: str, sent: float) -> None:
    started = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {sent!r} {started!r}\n".encode())
    finally:
        os.close(fd)


def read(path: str) -> list[tuple[str, float, float]]:
    """Every (tag, sent, started) recorded in *path* so far."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], float(parts[1]), float(parts[2])))
    return rows
