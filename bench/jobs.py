"""The bench's jobs: a no-op that records when it started, and a CPU-bound one.

Every system under test (pyramid_scheduler, Celery, Dramatiq, huey, the raw
broker loops) runs :func:`record`, which appends ``tag sent started`` to a
file with one ``O_APPEND`` write (atomic for a short line, so concurrent
runs do not mix). ``sent`` is the ``time.time()`` the producer took just
before enqueueing (or the date the job was due); ``started`` is
``time.time()`` as the job starts. All processes are on one machine, so
their clocks are the same clock.

:func:`spin` is the CPU-bound job of the scale-out part: *loops* turns of a
pure-Python loop (:func:`calibrate` finds how many take 20 ms of CPU, once,
in the bench process), then writes ``tag sent started ended pid``. The pid says
which process ran the job (how evenly a drain was shared out).
"""

from __future__ import annotations

import os
import time


def record(path: str, tag: str, sent: float) -> None:
    started = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {sent!r} {started!r} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def burn(loops: int) -> int:
    """Pure-Python work: holds the GIL throughout, as a CPU-bound job does."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def spin(path: str, tag: str, sent: float, loops: int) -> None:
    started = time.time()
    burn(loops)
    ended = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {sent!r} {started!r} {ended!r} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def calibrate(ms: float = 20.0) -> int:
    """The loops :func:`burn` needs for *ms* milliseconds of CPU on this
    machine: timed with the thread's CPU clock, so that other processes
    busy on a shared machine do not make the job shorter; the fastest of a
    few rounds."""
    probe = 200_000
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        burn(probe)
        best = min(best, time.thread_time() - start)
    return max(1, round(probe * ms / 1000 / best))


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
        if 3 <= len(parts) <= 5:
            rows.append((parts[0], float(parts[1]), float(parts[2])))
    return rows


def spans(path: str) -> list[tuple[float, float]]:
    """Every (started, ended) :func:`spin` recorded in *path* so far."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [(float(p[2]), float(p[3])) for p in (line.split() for line in lines) if len(p) == 5]


def pids(path: str) -> dict[str, int]:
    """How many of the jobs recorded in *path* each process ran."""
    counts: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) in (4, 5):
                    counts[parts[-1]] = counts.get(parts[-1], 0) + 1
    except FileNotFoundError:
        pass
    return counts


def step(previous: float, path: str, tag: str) -> float:
    """A chain's step (:mod:`bench.flows`): records its start with the time the
    previous step ended (*previous*, its result) as ``sent``; returns when it ends."""
    record(path, tag, previous)
    return time.time()
