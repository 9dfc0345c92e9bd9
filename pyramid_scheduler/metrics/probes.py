"""Probes: the job store's and the broker's answers for ``/health`` and the gauges.

:class:`Probes` asks the job store (the live daemons of each queue and their
heartbeats, the jobs by queue and status, the dead letters) and the broker
(each queue's depth) at once, each in a thread of its own, waited on for at
most :data:`PROBE_TIMEOUT` seconds in all: a probe answers in bounded time
even when a service hangs. At most :data:`MAX_HANGING` checks may hang at once; past that
a probe reports the service unavailable without asking it. The answers are
kept :data:`CACHE_SECONDS`, so that scrapes and probes in a burst ask once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyramid_scheduler.brokers.connection import broker_queue_name, make_connection
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.tables import FINAL, LIVE

log = get_logger(__name__)

#: Seconds a probe waits for the job store, and for the broker.
PROBE_TIMEOUT = 2.0
#: Seconds an answer is kept.
CACHE_SECONDS = 1.5
#: Checks that may be left hanging (each in a daemon thread) before the
#: probes stop asking.
MAX_HANGING = 4

_hanging = threading.BoundedSemaphore(MAX_HANGING)


def bounded(check: Callable[[], Any], what: str) -> Callable[[float], tuple[Any, str | None]]:
    """Start *check* in a thread of its own; returns the wait for it: called
    with a deadline (``time.monotonic()``), ``(answer, None)``, or
    ``(None, reason)`` if *check* raised or had not answered by then (it is
    left to finish in its thread)."""
    if not _hanging.acquire(blocking=False):
        refused = f"{what}: {MAX_HANGING} earlier checks still wait for an answer"
        return lambda deadline: (None, refused)
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["answer"] = check()
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            # The probe may be public: the reason names the failure's kind,
            # the log its text (a driver's message names hosts and users).
            log.warning("health probe: %s failed: %s: %s", what, type(exc).__name__, str(exc)[:300])
            box["error"] = f"{what}: unavailable ({type(exc).__name__})"
        finally:
            done.set()
            _hanging.release()

    threading.Thread(target=run, name="pscheduler-probe", daemon=True).start()

    def wait(deadline: float) -> tuple[Any, str | None]:
        if not done.wait(max(deadline - time.monotonic(), 0.0)):
            return None, f"{what}: no answer within {PROBE_TIMEOUT:g}s"
        if "error" in box:
            return None, box["error"]
        return box["answer"], None

    return wait


@dataclass
class Snapshot:
    """What the job store and the broker said at :attr:`taken` (monotonic)."""

    taken: float
    #: ``get_daemons()``'s answer (None: the job store did not answer).
    daemons: list[dict[str, Any]] | None = None
    #: ``(queue, status) -> count`` of the configured queues.
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_letters: int | None = None
    #: ``queue -> messages waiting`` (None: the broker did not answer).
    depths: dict[str, int] | None = None
    store_error: str | None = None
    broker_error: str | None = None


class Probes:
    """The job store's and the broker's answers for one scheduler (see the module).

    :param proxy: the application's :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self._lock = threading.Lock()
        self._last: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The answers, asked again when older than :data:`CACHE_SECONDS`."""
        with self._lock:
            last = self._last
            if last is not None and time.monotonic() - last.taken < CACHE_SECONDS:
                return last
            snap = Snapshot(time.monotonic())
            deadline = snap.taken + PROBE_TIMEOUT
            store_answer = bounded(self._read_store, "job store")  # both asked at once
            broker_answer = bounded(self._read_broker, "broker")
            store, snap.store_error = store_answer(deadline)
            if store is not None:
                snap.daemons, snap.jobs, snap.dead_letters = store
            snap.depths, snap.broker_error = broker_answer(deadline)
            self._last = snap
            return snap

    def _read_store(self) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int], int]:
        proxy = self.proxy
        daemons = proxy.get_daemons()
        ledger = proxy._ledger()
        queues = set(proxy.settings.queues)
        statuses = set(LIVE) | set(FINAL)
        jobs = {
            (row["queue"], row["status"]): int(row["count"])
            for row in ledger.job_counts()
            if row["queue"] in queues and row["status"] in statuses
        }
        return daemons, jobs, ledger.count_dead_letters()

    def _read_broker(self) -> dict[str, int]:
        settings = self.proxy.settings
        depths: dict[str, int] = {}
        with make_connection(settings, timeout=PROBE_TIMEOUT) as conn:
            conn.connect()
            for queue in settings.queues:
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(queue=broker_queue_name(settings, queue), passive=True)
                    depths[queue] = int(ok.message_count)
                except conn.channel_errors:
                    depths[queue] = 0  # not declared yet: no daemon ever consumed it, nothing sent
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - a channel the broker closed already
                        pass
        return depths

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)``: healthy when every queue has a live daemon and
        both the job store and the broker answer; the body says each."""
        snap = self.snapshot()
        reasons = [reason for reason in (snap.store_error, snap.broker_error) if reason]
        queues = []
        for entry in snap.daemons or []:
            beats = [daemon["heartbeat_at"] for daemon in entry["daemons"]]
            queues.append(
                {"queue": entry["queue"], "daemons": len(beats), "last_heartbeat": max(beats) if beats else None}
            )
            if not beats:
                reasons.append(f"queue {entry['queue']!r}: no live daemon")
        body = {
            "status": "unavailable" if reasons else "ok",
            "reasons": reasons,
            "broker": {"reachable": snap.broker_error is None},
            "jobstore": {"reachable": snap.store_error is None},
            "queues": queues,
        }
        return not reasons, body
