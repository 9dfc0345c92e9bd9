"""Housekeeping: the daemon's periodic chores.

Every ``scheduler.housekeeping`` seconds, on a thread of its own (an
internal APScheduler job, :meth:`.Engine.start`): finished job records older
than ``scheduler.result_ttl`` are forgotten, parked jobs whose code is back
are scheduled again (:meth:`.Recovery.restore_parked`), then the
``scheduler.housekeeping.append`` callables are called with the
application's registry as the current one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyramid.registry import Registry
from pyramid.threadlocal import manager as threadlocal_manager

from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import SchedulerSettings
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.tables import now

log = get_logger(__name__)


def purge_finished(ledger: Ledger, settings: SchedulerSettings) -> int:
    """Forget the finished job records older than ``scheduler.result_ttl``
    (or their own ``ttl``) and the old dead letters; how many jobs. Also
    ``pscheduler CONFIG-URI purge`` (:mod:`pyramid_scheduler.commands`)."""
    purged = ledger.purge(now() - settings.result_ttl)
    log.info("housekeeping: %d finished job record(s) purged", purged)
    return purged


@dataclass(kw_only=True, eq=False)
class Housekeeping:
    """The chores of one daemon (:meth:`run` does them once)."""

    settings: SchedulerSettings
    ledger: Ledger
    registry: Registry | None
    restore_parked: Callable[[], int]

    def run(self) -> None:
        """Forget finished jobs older than ``scheduler.result_ttl``, restore
        parked jobs, then call the ``scheduler.housekeeping.append`` callables."""
        purge_finished(self.ledger, self.settings)
        self.restore_parked()
        threadlocal_manager.push({"registry": self.registry, "request": None})
        try:
            for func in self.settings.housekeeping_append:
                try:
                    func()
                except Exception:
                    log.exception("housekeeping callable %r failed", func)
        finally:
            threadlocal_manager.pop()
