"""Jobs and listeners that misbehave, for the job-failure tests.

Each writes to the oracle (:mod:`integration.sampleapp.jobs`) so the test can
see what happened and when. A job or listener that "hangs" or "blocks" waits
for a release file next to the oracle (``<oracle>.release``), which the test
creates once it has seen what it wanted; it gives up after two minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .jobs import _log_run, runs

#: Seconds a hanging job or a blocking listener waits for its release file at most.
LONGEST = 120.0


def release_file(oracle: str) -> Path:
    return Path(f"{oracle}.release")


def _wait_for_release(oracle: str) -> None:
    deadline = time.monotonic() + LONGEST
    while not release_file(oracle).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def exits(oracle: str, tag: str) -> None:
    """Record the run, then ``sys.exit(3)``."""
    _log_run(oracle, tag, "run")
    sys.exit(3)


def hangs(oracle: str, tag: str) -> str:
    """Record a start, hang until released, record the end."""
    _log_run(oracle, tag, "start")
    _wait_for_release(oracle)
    _log_run(oracle, tag, "end")
    return tag


def flaky(oracle: str, tag: str, failures: int) -> str:
    """Record the run; raise on the first *failures* runs of *tag*."""
    _log_run(oracle, tag, "run")
    count = len(runs(oracle, tag))
    if count <= failures:
        raise ConnectionError(f"{tag}: run {count} fails on purpose")
    return tag


def raising_listener(event: Any, oracle: str) -> None:
    """On every event of a job whose id starts with ``boom``: ``sys.exit(4)``
    for its CREATED event, raise for the others."""
    if str(event.get("job_id") or "").startswith("boom"):
        if event.type == "job.created":
            sys.exit(4)
        raise RuntimeError(f"listener fails on purpose on {event.type} of {event.job_id}")


def blocking_listener(event: Any, oracle: str) -> None:
    """Block the event dispatcher on the CREATED event of a job whose id
    starts with ``block``, until released."""
    job_id = str(event.get("job_id") or "")
    if event.type == "job.created" and job_id.startswith("block"):
        _log_run(oracle, job_id, "listener-blocked")
        _wait_for_release(oracle)
        _log_run(oracle, job_id, "listener-released")
