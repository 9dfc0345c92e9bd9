"""Flow: each job's priority and expiry, and the worker pool's order.

Between the intake (:mod:`.intake`), which reads a job's ``priority`` and
``expires`` options from its request, and execution (:mod:`.execution`),
which starts the runs the pool hands it. A job with either option is a
:class:`FlowJob`: its state (what the job store pickles) carries them under
the key ``"flow"``, so they hold in the job store, across daemons and
restarts; a job without them keeps APScheduler's plain state.

The worker pool takes its work from a :class:`PriorityWork` instead of a
FIFO queue (:func:`order_pool`): among the batches of runs waiting for a
thread, the one of highest priority starts first (the job's ``priority``,
else ``scheduler.priority.<queue>``, else 0), those of one priority in the
order they were handed over. No priority starves the others for ever: a
batch that has waited ``scheduler.priority_aging`` seconds goes before every
batch that has waited less, whatever the priorities, the oldest first.

Expiry (:func:`expired`) is checked when a run would start: a one-off job
not started by its ``expires`` time is recorded ``expired`` with a
``JOB_EXPIRED`` event (:func:`record_expired`), never run late.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.aps import pool_of, queue_of
from pyramid_scheduler.daemon.catchup import CatchUpJob
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.records import RunEnd

log = get_logger(__name__)

#: A job's priority when neither it nor its queue names one.
DEFAULT_PRIORITY = 0
#: The key of a job's state that holds its flow options.
FLOW_KEY = "flow"


class FlowJob(CatchUpJob):
    """A job with a ``priority`` or an ``expires`` time (epoch seconds), kept
    in its state under :data:`FLOW_KEY`."""

    priority: int | None
    expires: float | None

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state[FLOW_KEY] = {"priority": self.priority, "expires": self.expires}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        flow = state.pop(FLOW_KEY, None) or {}
        super().__setstate__(state)
        self.priority = _whole(flow.get("priority"))
        self.expires = _number(flow.get("expires"))


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9 else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def flow_options(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The flow options of a request's *options* (checked at the door), as
    a job's state keeps them; None when it has neither."""
    if options.get("priority") is None and options.get("expires") is None:
        return None
    return {"priority": options.get("priority"), "expires": options.get("expires")}


def job_class(state: Mapping[str, Any], default: type[Any]) -> type[Any]:
    """:class:`FlowJob` for a job state with flow options, else *default*."""
    return FlowJob if state.get(FLOW_KEY) else default


def expired(job: Any, now: datetime) -> bool:
    """True if *job* has an expiry and it has passed at *now*."""
    expires = getattr(job, "expires", None)
    return expires is not None and now.timestamp() >= expires


def expired_at_door(request: Any, now: datetime) -> bool:
    """True if *request* (an ``add``) arrives after its ``expires`` time."""
    expires = request.options.get("expires")
    return expires is not None and now.timestamp() >= expires


def expiry_reason(expires: float, now: datetime) -> str:
    at = datetime.fromtimestamp(expires, timezone.utc).isoformat()
    return f"not started by its expiry ({at}); {now.timestamp() - expires:.3f}s past it, so not run"


def record_expired(
    runner: Any, job: Any, info: dict[str, Any] | None, run_time: datetime, key: str, now: datetime
) -> None:
    """Record the run *key* of *job* (due at *run_time*) ``expired``: the
    job's final status, expiry being for one-off jobs; then a JOB_EXPIRED
    event and JOB_REMOVED. *runner* is the :class:`~.execution.Runner`."""
    queue = queue_of(job)
    reason = expiry_reason(job.expires, now)
    log.warning("job %s (queue %s): run %s expired: %s", job.id, queue, key, reason)
    runner.persist(
        f"job {job.id}: recording expired run {key}",
        runner.ledger.finish_run,
        RunEnd(
            job.id,
            key,
            "expired",
            True,
            error=reason,
            scheduled_at=run_time.timestamp(),
            queue=queue,
            owner=runner.owner,
        ),
    )
    event = Event(
        Event.JOB_EXPIRED,
        job_id=job.id,
        queue=queue,
        job=info,
        run_key=key,
        scheduled_run_time=run_time,
        reason=reason,
        expires=datetime.fromtimestamp(job.expires, timezone.utc),
    )
    runner.events.emit_run_events(job.id, [event], True)


# -- the worker pool's order -------------------------------------------------------------


class _Entry:
    __slots__ = ("item", "at", "taken")

    def __init__(self, item: Any, at: float) -> None:
        self.item = item
        self.at = at
        self.taken = False


class PriorityWork:
    """The work queue of a :class:`concurrent.futures.ThreadPoolExecutor`
    (the methods its workers and ``shutdown`` call), higher priority first,
    with aging (see the module). *rank* gives a work item's priority; the
    ``None`` that tells a worker to stop comes after all work."""

    def __init__(self, rank: Callable[[Any], int], aging: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rank = rank
        self.aging = aging
        self.clock = clock
        self._ready = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, _Entry]] = []
        self._fifo: deque[_Entry] = deque()
        self._order = itertools.count()
        self._stops = 0
        self._count = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self._ready:
            if item is None:
                self._stops += 1
            else:
                entry = _Entry(item, self.clock())
                heapq.heappush(self._heap, (-self.rank(item), next(self._order), entry))
                self._fifo.append(entry)
                self._count += 1
            self._ready.notify()

    put_nowait = put

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self._ready:
            # Counted, not the heap's length: it keeps the entries the aging took.
            if not self._ready.wait_for(lambda: self._count or self._stops, timeout if block else 0):
                raise queue.Empty
            return self._take()

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def _take(self) -> Any:
        if not self._count:  # only stops left: a worker's
            self._stops -= 1
            return None
        fifo = self._fifo
        while fifo and fifo[0].taken:
            fifo.popleft()
        if fifo and self.clock() - fifo[0].at >= self.aging:
            entry = fifo.popleft()  # waited long enough: before any priority
        else:
            while self._heap[0][2].taken:
                heapq.heappop(self._heap)
            entry = heapq.heappop(self._heap)[2]
        entry.taken = True
        self._count -= 1
        if len(self._heap) > 2 * len(fifo) + 64:  # drop the entries the aging took
            self._heap = [row for row in self._heap if not row[2].taken]
            heapq.heapify(self._heap)
        return entry.item

    def __len__(self) -> int:
        return self.qsize()

    def qsize(self) -> int:
        return self._count

    def empty(self) -> bool:
        return self.qsize() == 0


def priority_of(job: Any, defaults: Mapping[str, int]) -> int:
    """*job*'s priority: its own, else its queue's default, else :data:`DEFAULT_PRIORITY`."""
    own = getattr(job, "priority", None)
    if own is not None:
        return int(own)
    return defaults.get(queue_of(job), DEFAULT_PRIORITY)


def due_order(jobs: list[Any], now: datetime, default: int, aging: float) -> list[Any]:
    """*jobs* (due at *now*, of one queue whose default priority is
    *default*) in the order the pool would start them: those due
    *aging* seconds ago or more first, oldest first; then higher priority
    first, then earlier due first."""
    limit = now.timestamp() - aging

    def rank(job: Any) -> tuple[int, int, float]:
        due = job.next_run_time.timestamp()
        if due <= limit:
            return (0, 0, due)
        own = getattr(job, "priority", None)
        return (1, -(default if own is None else own), due)

    return sorted(jobs, key=rank)


def order_pool(executor: Any, defaults: Mapping[str, int], aging: float) -> bool:
    """Make *executor*'s thread pool (APScheduler's, before it starts a
    thread) take its work by priority (:class:`PriorityWork`); False if its
    pool is not a :class:`concurrent.futures.ThreadPoolExecutor` (the testing
    kit's runs each batch at once)."""
    pool = pool_of(executor)
    # concurrent.futures' private queue, which its workers and shutdown() use.
    if not hasattr(pool, "_work_queue") or getattr(pool, "_threads", None):
        return False

    pool._work_queue = PriorityWork(work_rank(defaults), aging)
    return True


def work_rank(defaults: Mapping[str, int]) -> Callable[[Any], int]:
    """The priority of a batch of a job's runs handed to the pool: a
    :mod:`concurrent.futures` work item of ``runner.run(job, run_times)``,
    or the testing kit's ``(job, run_times)``."""

    def rank(item: Any) -> int:
        args: tuple[Any, ...] = item if isinstance(item, tuple) else getattr(item, "args", ())
        try:
            return priority_of(args[0], defaults)
        except Exception:  # noqa: BLE001 - not a batch of a job's runs: no priority
            return DEFAULT_PRIORITY

    return rank
