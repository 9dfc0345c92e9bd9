"""Persist: the daemon's writes to the job store, retried while it is unavailable.

Used by every part of the daemon that writes what must not be lost (a run's
start and end, a job's new status): a write that fails with a database error
is tried again with a growing delay until it succeeds, or until the daemon
stops; what was not written then is found by the next daemon's recovery
(:mod:`.recovery`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: Seconds before the first retry of a write, and the most between two.
FIRST_DELAY = 0.25
MAX_DELAY = 10.0


class Persist:
    """Calls ledger writes, retrying them until they succeed or :attr:`stopping` is set."""

    def __init__(self) -> None:
        #: Set when the daemon stops: a failing write then gives up.
        self.stopping = threading.Event()

    def __call__(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``func(*args, **kwargs)``, retried while it raises a database error.

        Gives up (returning ``None``) only once the daemon is stopping; *what*
        names the write in the logs.
        """
        delay = FIRST_DELAY
        while True:
            try:
                return func(*args, **kwargs)
            except sa.exc.SQLAlchemyError as exc:
                if self.stopping.is_set():
                    log.error("%s failed and the daemon is stopping: %s", what, exc)
                    return None
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, MAX_DELAY)
