"""The demo's jobs: module-level functions, so the daemon can import them."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

from pyramid.threadlocal import get_current_registry

log = logging.getLogger(__name__)


def say(message: str) -> dict[str, Any]:
    """Log *message* and return where and when it ran (shown as the result)."""
    registry = get_current_registry()
    ran_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    log.info("demo job says %r", message)
    return {"message": message, "ran_at": ran_at, "pid": os.getpid(), "app": registry.settings.get("demo.title", "")}


def slow(message: str, seconds: float = 3.0) -> str:
    """Take a while, to see a job in the ``running`` state."""
    time.sleep(seconds)
    return f"{message} (after {seconds:g} s)"


def fail(message: str) -> None:
    """Raise, to see a failed job with its error."""
    raise RuntimeError(f"this job fails on purpose: {message}")
