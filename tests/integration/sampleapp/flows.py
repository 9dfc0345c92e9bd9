"""Job functions of the sample application for chains and groups: each
records its run in the oracle (:mod:`.jobs`) and returns what the next step takes."""

from __future__ import annotations

import os
import time
from typing import Any

from integration.sampleapp.jobs import _log_run


def begin(oracle: str, tag: str, value: int) -> int:
    """A chain's first step: *value*."""
    _log_run(oracle, tag, "run")
    return value


def add(previous: int, oracle: str, tag: str, amount: int) -> int:
    """A chain's next step: the previous result plus *amount*."""
    _log_run(oracle, tag, "run")
    return previous + amount


def fail(previous: Any, oracle: str, tag: str) -> None:
    """A step that records its run, then raises."""
    _log_run(oracle, tag, "run")
    raise RuntimeError(f"sampleapp step {tag} fails on purpose")


def member(oracle: str, tag: str, value: int, seconds: float = 0.0) -> dict[str, int]:
    """A group's member: takes *seconds*, returns *value* and the process that ran it."""
    _log_run(oracle, tag, "run")
    time.sleep(seconds)
    return {"value": value, "pid": os.getpid()}


def gather(results: list[Any], oracle: str, tag: str) -> list[Any]:
    """A group's then step: the members' results, as it got them."""
    _log_run(oracle, tag, "run")
    return results
