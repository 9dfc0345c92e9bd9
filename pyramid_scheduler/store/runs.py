"""Group commit of run starts and ends.

Each job run writes twice to the ledger: its start (before the job function
is called) and its end. Written one by one, from the worker threads, that is
two transactions per run, eight round trips to the database and two commits
(each one a flush of the database's log to disk); at a few hundred runs a
second the worker threads spent nearly all their time waiting for those.

:class:`RunWriter` is one thread that writes them for every worker: a worker
hands it a start or an end and waits for it to be committed, exactly as if it
had written it itself; meanwhile the writer takes every start and end that
is waiting (up to :data:`MAX_BATCH`, never two of one job, so their order
per job holds) and writes them at once
(:meth:`~pyramid_scheduler.store.ledger.Ledger.write_runs`, whose statements
are in :mod:`pyramid_scheduler.store.runwrites`: one statement on
PostgreSQL, one transaction of a few statements elsewhere). What a batch
leaves unwritten because it is not the common case (a run already
recorded, a job canceled meanwhile, a missed run never started), and all of
a batch the database failed, is written one by one with the ledger's own
:meth:`~pyramid_scheduler.store.ledger.Ledger.start_run` and
:meth:`~pyramid_scheduler.store.ledger.Ledger.finish_run`, so each worker
gets exactly the answer or the error those give.

A start and an end travel as :class:`~pyramid_scheduler.store.records.RunStart`
and :class:`~pyramid_scheduler.store.records.RunEnd`; the one write of a job
that skipped record-first (``durable=False``), its record and its run's
after the run, as :class:`~pyramid_scheduler.store.records.RunAfter`, written
together with the others of a batch
(:meth:`~pyramid_scheduler.store.ledger.Ledger.record_after`).

A start or end handed in while the writer is idle (nothing waiting, no batch
being written) is written by the worker's own thread, holding the writer's
turn: the common case at a low rate, where the two hand-overs between
threads and waiting for the writer to wake cost more than the write itself,
and a job's start waits for no one else's write.

Why by hand: SQLAlchemy and the database drivers pool connections and batch
statements (``executemany``), but have no group commit across threads.
"""

from __future__ import annotations

import queue
import threading

import sqlalchemy as sa

from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.records import RunAfter, RunEnd, RunStart

log = get_logger(__name__)

#: Most starts and ends written in one transaction.
MAX_BATCH = 200


class _Write:
    """A start or an end handed in, and its answer (or error) once written."""

    __slots__ = ("record", "done", "result", "error")

    def __init__(self, record: RunStart | RunEnd | RunAfter) -> None:
        self.record = record
        self.done = threading.Event()
        #: start_run's answer (str), finish_run's or record_after's (bool); None until written.
        self.result: str | bool | None = None
        self.error: BaseException | None = None

    @property
    def job_id(self) -> str:
        return self.record.job_id


class RunWriter:
    """Writes the run starts and ends of a daemon's worker threads, several
    per transaction; :meth:`start_run` and :meth:`finish_run` are the
    ledger's, with the same arguments, answers and errors."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Held while a batch or a write of a worker's own thread is written:
        #: one write at a time, in the order they were handed in.
        self._writing = threading.Lock()
        #: Writes queued and not yet written (guarded by ``_lock``).
        self._pending = 0

    def start(self) -> None:
        with self._lock:
            self._thread = threading.Thread(target=self._run, name="pscheduler-runs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what was handed in, then end the thread; what comes after
        (a run still going past the shutdown timeout) is written by its own
        thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join()

    def start_run(self, start: RunStart) -> str:
        return str(self._call(start))

    def finish_run(self, end: RunEnd) -> bool:
        return bool(self._call(end))

    def record_after(self, after: RunAfter) -> bool:
        """Record a job that skipped record-first, after its run; False if it
        could not be (:meth:`~pyramid_scheduler.store.ledger.Ledger.record_after`)."""
        return bool(self._call(after))

    def _call(self, record: RunStart | RunEnd | RunAfter) -> str | bool:
        write = _Write(record)
        with self._lock:  # nothing is queued after the stop's end marker
            running = self._thread is not None
            # Idle: nothing queued before this write, no batch being written.
            own_turn = running and not self._pending and self._writing.acquire(blocking=False)
            queued = running and not own_turn
            if queued:
                self._pending += 1
                self._queue.put(write)
        if not queued:  # the writer is idle, not started or stopped: written by this thread
            try:
                return self._alone(write)
            finally:
                if own_turn:
                    self._writing.release()
        write.done.wait()
        if write.error is not None:
            raise write.error
        if write.result is None:
            raise RuntimeError("the run writer gave no answer")  # cannot happen: _write sets one
        return write.result

    def _alone(self, write: _Write) -> str | bool:
        if isinstance(write.record, RunStart):
            return self.ledger.start_run(write.record)
        if isinstance(write.record, RunAfter):
            return bool(self.ledger.record_after([write.record]))
        return self.ledger.finish_run(write.record)

    def _run(self) -> None:
        carried: _Write | None = None
        stopping = False
        while not stopping:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is None:
                return
            batch = [first]
            try:
                # The batch is what waits once it is this thread's turn
                # (a worker may be writing its own).
                with self._writing:
                    carried, stopping = self._take_waiting(batch)
                    self._write(batch)
            except BaseException:  # noqa: BLE001 - the thread must outlive any error
                log.exception("the run writer failed around a batch")
            finally:
                # Idle again before the workers wake, so their next writes can be their own.
                with self._lock:
                    self._pending -= len(batch)
                for write in batch:
                    write.done.set()

    def _take_waiting(self, batch: list[_Write]) -> tuple[_Write | None, bool]:
        """Add the writes waiting to *batch*, up to :data:`MAX_BATCH` and never
        two of one job (their order must hold); return the write of a job
        already in it (for the next batch) and whether the stop's end marker
        was taken."""
        jobs = {write.job_id for write in batch}
        while len(batch) < MAX_BATCH:
            try:
                write = self._queue.get_nowait()
            except queue.Empty:
                return None, False
            if write is None:
                return None, True
            if write.job_id in jobs:
                return write, False
            batch.append(write)
            jobs.add(write.job_id)
        return None, False

    def _write(self, batch: list[_Write]) -> None:
        """Give each write of *batch* its answer or error."""
        rest = batch
        if len(batch) > 1:
            try:
                rest = self._together(batch)
            except sa.exc.IntegrityError:
                pass  # a start's run is known, and nothing written: one by one below
            except Exception as exc:  # noqa: BLE001 - one by one gives each its own answer or error
                log.debug("writing %d run starts and ends together failed (%s); one by one", len(batch), exc)
        for write in rest:
            try:
                write.result = self._alone(write)
            except BaseException as exc:  # noqa: BLE001 - handed to the worker that asked
                write.error = exc

    def _together(self, batch: list[_Write]) -> list[_Write]:
        """Write *batch* with :meth:`~pyramid_scheduler.store.ledger.Ledger.write_runs`;
        return the writes it left to write one by one (and the ends of runs
        never started, which only the ledger's own path records)."""
        starts = [write.record for write in batch if isinstance(write.record, RunStart)]
        ends = [write.record for write in batch if isinstance(write.record, RunEnd) and not write.record.unstarted]
        afters = [write.record for write in batch if isinstance(write.record, RunAfter)]
        written = self.ledger.write_runs(starts, ends)
        if afters:
            try:  # after the others: if this fails, theirs stand, and these go one by one
                written |= self.ledger.record_after(afters)
            except Exception as exc:  # noqa: BLE001 - one by one gives each its own answer or error
                log.debug("writing %d records after their runs together failed (%s); one by one", len(afters), exc)
        rest = []
        for write in batch:
            if write.record.run_key not in written:
                rest.append(write)
            elif isinstance(write.record, RunStart):
                write.result = "start"
            else:
                write.result = True
        return rest
