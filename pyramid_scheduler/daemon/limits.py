"""Flow limits at a run's start: concurrency slots and rate reservations.

The runner (:mod:`.execution`) asks :meth:`Limits.enter` before it carries
out a run of a job added with ``max_concurrency`` or ``rate_limit``
(:mod:`pyramid_scheduler.wire.limits`), and :meth:`Limits.leave` after it.
Such a job is stored under the executor alias :data:`LIMITED` (the same
pool as every job), so the runner reads the job's options from its record
only for them: other jobs pay nothing.

* **Concurrency**: the run takes one of the ``max_concurrency`` slots of its
  key in the job store (:meth:`pyramid_scheduler.store.slots.Slots.take`),
  shared by every daemon and process. All taken: the run is *held*: the job
  shows ``waiting`` with the reason, and is stored back in its queue's job
  store due :attr:`Limits.poll` seconds later (polled; a fixed interval
  with up to 50 % jitter, so that held runs of several daemons do not ask
  together). It is not missed: a held run has no misfire grace to outlive.
* **Rate**: the run reserves the next start of its rate key
  (:meth:`~pyramid_scheduler.store.slots.Slots.reserve`): starts are spaced
  by ``period / count`` (a token bucket of one token, Celery's rule), so no
  window of one period holds more than *count* starts. A start reserved
  later than now: the job shows ``waiting`` and is stored back due at that
  time, with a hold, so that it does not reserve again. Reservations are
  made in the order the runs reach a worker, so order is kept.

Concurrency is checked first: a run held for a slot reserves no start; a run
that has its slot but must wait for its start gives the slot back.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.job import Job

from pyramid_scheduler.daemon.clock import SYSTEM_CLOCK, Clock
from pyramid_scheduler.daemon.persist import Persist
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.slots import Slots
from pyramid_scheduler.wire.limits import parse_rate

log = get_logger(__name__)

#: The executor alias of jobs with flow limits (the same pool as ``default``).
LIMITED = "limited"
#: Starts closer than this to now run now (a reservation's own round trip).
NOW = 0.001


@dataclass(frozen=True)
class LimitSpec:
    """A job's limits, from its options; the keys default to the function's reference."""

    max_concurrency: int | None
    concurrency_key: str
    rate: tuple[int, float] | None
    rate_key: str

    @classmethod
    def of(cls, options: dict[str, Any], func: str) -> LimitSpec | None:
        if "max_concurrency" not in options and "rate_limit" not in options:
            return None
        key = str(options.get("concurrency_key") or func)
        rate = parse_rate(options["rate_limit"]) if "rate_limit" in options else None
        return cls(options.get("max_concurrency"), key, rate, str(options.get("rate_key") or key))


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Limits.enter` decided: run now (``later`` None, not
    ``not_run``), hold until ``later``, or not run here (``not_run``: this
    daemon is declared dead, or stopping)."""

    later: datetime | None = None
    not_run: bool = False
    #: The slot taken (to give back in :meth:`Limits.leave`).
    slot: bool = False


@dataclass(kw_only=True, eq=False)
class Limits:
    """The flow limits of the runs of one daemon (see the module)."""

    ledger: Ledger
    owner: str
    #: Seconds between two checks of a run held for a slot (``scheduler.limits.poll``).
    poll: float = 1.0
    clock: Clock = SYSTEM_CLOCK

    def __post_init__(self) -> None:
        self.slots = Slots(self.ledger)

    def applies(self, job: Job) -> bool:
        """Whether *job* was stored with flow limits (under :data:`LIMITED`)."""
        return getattr(job, "executor", None) == LIMITED

    def admit(self, job: Job, run_key: str, persist: Persist) -> Verdict | None:
        """:meth:`enter` for the run *run_key* of *job*, its reads and writes
        retried while the job store is down (*persist*). None: the job has
        no limits after all; ``not_run``: the daemon stopped meanwhile, or
        the job has no record (the next daemon, or no one, runs it)."""
        found = persist(f"job {job.id}: reading its flow limits", lambda: (self.spec(job),))
        if found is None:
            return Verdict(not_run=True)
        spec = found[0]
        if spec is None:
            return None
        verdict = persist(f"job {job.id}: taking its flow limits", self.enter, spec, job.id, run_key)
        return Verdict(not_run=True) if verdict is None else verdict

    def spec(self, job: Job) -> LimitSpec | None:
        """*job*'s limits, read from its record."""
        found = self.slots.job_request(job.id)
        if found is None:
            return None
        request, func = found
        return LimitSpec.of(json.loads(request).get("options") or {}, func)

    def enter(self, spec: LimitSpec, job_id: str, run_key: str) -> Verdict:
        """Take the run's slot and its start (see the module)."""
        now = self.clock.now()
        stamp = now.timestamp()
        slot = False
        if spec.max_concurrency is not None:
            got = self.slots.take(spec.concurrency_key, spec.max_concurrency, run_key, job_id, self.owner, stamp)
            if got == "fenced":
                return Verdict(not_run=True)
            if got == "full":
                delay = self.poll * (1 + random.random() / 2)  # noqa: S311 - jitter, not secrecy
                reason = (
                    f"concurrency limit: {spec.max_concurrency} run(s) with key {spec.concurrency_key!r} "
                    "already running; waiting for a slot"
                )
                return self._hold(job_id, reason, now + timedelta(seconds=delay))
            slot = True
        if spec.rate is not None and not self.slots.use_hold(job_id):
            count, period = spec.rate
            start = self.slots.reserve(spec.rate_key, period / count, stamp)
            if start - stamp > NOW:
                if slot:
                    self.slots.release(run_key)
                at = datetime.fromtimestamp(start, timezone.utc)
                self.slots.hold(job_id, spec.rate_key, start)
                rate = f"{count}/{_unit(period)}"
                reason = f"rate limit: {rate} for key {spec.rate_key!r}; start reserved at {at.isoformat()}"
                return self._hold(job_id, reason, at)
        return Verdict(slot=slot)

    def leave(self, verdict: Verdict, run_key: str) -> None:
        """The run has ended (or did not start): give its slot back."""
        if verdict.slot:
            self.slots.release(run_key)

    def _hold(self, job_id: str, reason: str, later: datetime) -> Verdict:
        log.info("job %s: held back until %s: %s", job_id, later.isoformat(), reason)
        self.slots.set_waiting(job_id, reason, self.clock.now().timestamp())
        return Verdict(later=later)


def _unit(period: float) -> str:
    return {1.0: "s", 60.0: "m", 3600.0: "h"}.get(period, f"{period:g}s")
