"""Supervision: ``pscheduler --processes N`` and ``pscheduler --restart``.

Beside the data flow, above it: a :class:`Supervisor` runs N daemons as
child processes (``python -m pyramid_scheduler.scripts CONFIG-URI [-q ...]``),
each told its place by the environment (``PSCHEDULER_PROCESS=2/4``, see
:class:`Place`). It loads nothing of the application; ``pscheduler`` reads
``scheduler.processes`` and ``scheduler.shutdown_timeout`` for it. It
restarts a child that dies (after the restart interval, doubled for each
crash soon after a start), stops them all when one exits with a code a
restart cannot cure (a bad command line or setting), passes SIGTERM and
SIGINT on and kills the children still running when the stop timeout is
up, and on SIGHUP restarts them one at a time. Signal handlers only note
the signal; the main loop acts on it. Under ``--reload`` hupper's worker is
the supervisor: each child appends the files it imports to a file that the
supervisor hands to hupper (:class:`ModuleReport`), so a change to the
application's code restarts everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

import hupper
from hupper.worker import WatchSysModules

from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)

#: In each child: its index and how many there are, ``2/4``.
PROCESS_ENV = "PSCHEDULER_PROCESS"
#: In each child: the supervisor's pid.
SUPERVISOR_ENV = "PSCHEDULER_SUPERVISOR"
#: In each child under ``--reload``: the file it appends its imported files to.
WATCH_ENV = "PSCHEDULER_WATCH"

#: Seconds after ``scheduler.shutdown_timeout`` that a child may still take to
#: stop (it delivers its last events, up to 5 s) before it is killed.
STOP_GRACE = 10.0
#: A child that exits sooner than this after its start crashed at start:
#: each such crash in a row doubles the wait before the next restart.
STABLE_AFTER = 30.0
#: The longest wait before a restart (unless the restart interval is longer).
MAX_BACKOFF = 60.0
#: Seconds the main loop sleeps at most (signals and child exits wake it).
TICK = 1.0

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Place:
    """Which of the supervised daemons this process is."""

    index: int
    count: int
    #: The supervisor's pid.
    supervisor: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Place | None:
        """This process's place, or None when no supervisor started it."""
        value = environ.get(PROCESS_ENV)
        if not value:
            return None
        index, _, count = value.partition("/")
        return cls(int(index), int(count or index), int(environ.get(SUPERVISOR_ENV) or 0))

    def follow_supervisor(self) -> bool:
        """Have Linux send this process SIGTERM when the supervisor dies (a
        supervisor killed with SIGKILL leaves no daemon behind); False when
        it has died already."""
        if sys.platform.startswith("linux") and self.supervisor:
            try:
                ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            except (OSError, AttributeError):  # pragma: no cover - no prctl: the supervisor's stop still reaches it
                pass
            return os.getppid() == self.supervisor
        return True


class ModuleReport:
    """In a child under ``--reload``: append the files this process imports
    (those hupper's own worker would watch) to *path*, one per line, for the
    supervisor to hand to hupper."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.poller = WatchSysModules(self._append)
        self.poller.daemon = True

    def start(self) -> None:
        self.poller.start()

    def failed(self, exc: BaseException) -> None:
        """The application failed to load: report at once what it imported,
        and the files of the traceback (a syntax error's file among them)."""
        self.poller.update_paths()
        self.poller.search_traceback(exc.__traceback__)

    def _append(self, paths: list[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as report:
            report.write("".join(f"{path}\n" for path in paths))


class Child:
    """One supervised daemon: its place, its process, when to start it again."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.name = f"pscheduler process {index} of {count}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        #: Crashes in a row, each sooner than STABLE_AFTER after its start.
        self.crashes = 0
        #: When to start it (again); None: not to be started.
        self.start_at: float | None = 0.0
        #: Stopped by a SIGHUP to be started again at once.
        self.cycling = False

    def __str__(self) -> str:
        return f"{self.name} (pid {self.proc.pid})" if self.proc is not None else self.name


def how_it_ended(code: int) -> str:
    """``exited with code 1``, ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Run *processes* daemons ``python -m pyramid_scheduler.scripts *argv``
    and keep them running until SIGTERM or SIGINT.

    :param argv: the children's arguments: CONFIG-URI, ``--app-name``, ``-q``.
    :param restart_interval: seconds before the first restart of a child.
    :param stop_timeout: seconds the children have to stop before SIGKILL.
    :param fatal_codes: exit codes that stop every child and the supervisor,
        which then exits with that code.
    """

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        *,
        restart_interval: float,
        stop_timeout: float,
        fatal_codes: Collection[int],
    ) -> None:
        self.argv = [sys.executable, "-m", "pyramid_scheduler.scripts", *argv]
        self.count = processes
        self.restart_interval = restart_interval
        self.stop_timeout = stop_timeout
        self.fatal_codes = frozenset(fatal_codes)
        self.children = [Child(index, processes) for index in range(1, processes + 1)]
        self._stop_signal: int | None = None
        self._hangup = False
        self._rolling: deque[Child] = deque()
        self._wakeup = -1
        self._reports: str | None = None
        self._read: dict[int, int] = {}

    def run(self) -> int:
        """Supervise until asked to stop or a child exits with a fatal code;
        the exit code (0, or a child's fatal code or error while stopping)."""
        with self._signals_noted(), self._reports_read():
            log.info("supervising %d pscheduler process(es) (pid %d)", self.count, os.getpid())
            return self._stop_all(self._supervise())

    # -- the main loop ------------------------------------------------------------------
    def _supervise(self) -> int | None:
        """Start, reap and restart children until a stop; a child's fatal
        exit code, or None."""
        while self._stop_signal is None:
            now = time.monotonic()
            for child in self.children:
                code = child.proc.poll() if child.proc is not None else None
                if code is not None and self._exited(child, code, now):
                    return code
            if self._hangup:
                self._hangup = False
                log.info("SIGHUP: restarting the pscheduler processes one at a time")
                self._rolling = deque(self.children)
            for child in self.children:
                if child.proc is None and child.start_at is not None and child.start_at <= now:
                    self._start(child, now)
            self._roll(now)
            waits = [child.start_at for child in self.children if child.proc is None and child.start_at is not None]
            if not waits and all(child.proc is None for child in self.children):
                log.info("every pscheduler process stopped on its own")
                return None
            self._sleep(min([TICK, *(at - now for at in waits)]))
        return None

    def _start(self, child: Child, now: float) -> None:
        env = dict(os.environ)
        env[PROCESS_ENV] = f"{child.index}/{self.count}"
        env[SUPERVISOR_ENV] = str(os.getpid())
        if self._reports is not None:
            path = os.path.join(self._reports, str(child.index))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._read[child.index] = 0
            env[WATCH_ENV] = path
            env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in hupper's worker: a new .pyc may look like a change
        child.start_at = None
        child.started = now
        try:
            child.proc = subprocess.Popen(self.argv, env=env)
        except OSError as exc:  # out of processes or memory: try again later
            child.crashes += 1
            child.start_at = now + self._backoff(child)
            log.error("could not start %s (%s); trying again in %gs", child, exc, child.start_at - now)
            return
        log.info("started %s", child)

    def _exited(self, child: Child, code: int, now: float) -> bool:
        """Note *child*'s exit; True when *code* must stop everything."""
        self._forward_reports()
        ended = f"{child} {how_it_ended(code)}"
        child.proc = None
        if child.cycling:
            child.cycling = False
            child.crashes = 0
            child.start_at = now
            log.info("%s; starting it again (SIGHUP)", ended)
            return False
        if code in self.fatal_codes:
            log.error("%s, which a restart would not cure; stopping the other processes", ended)
            return True
        if code == 0:
            # Stopped on request (someone sent it SIGTERM): as under --restart, not restarted.
            log.info("%s; not restarted", ended)
            return False
        child.crashes = child.crashes + 1 if now - child.started < STABLE_AFTER else 1
        delay = self._backoff(child)
        child.start_at = now + delay
        log.warning("%s; restarting in %gs", ended, delay)
        if self._rolling:  # do not take the others down one by one into the same failure
            log.warning("SIGHUP restart abandoned, %d process(es) left as they are", len(self._rolling))
            self._rolling.clear()
        return False

    def _backoff(self, child: Child) -> float:
        longest = max(MAX_BACKOFF, self.restart_interval)
        return float(min(self.restart_interval * 2 ** max(child.crashes - 1, 0), longest))

    def _roll(self, now: float) -> None:
        """SIGHUP: stop the next child once the one before has been started again."""
        if not self._rolling or any(child.cycling for child in self.children):
            return
        child = self._rolling.popleft()
        if child.proc is None:
            child.start_at = now  # stopped or waiting to be restarted: start it now
            return
        child.cycling = True
        log.info("stopping %s to start it again", child)
        child.proc.send_signal(signal.SIGTERM)

    def _stop_all(self, fatal: int | None) -> int:
        """Pass the stop signal on, wait up to the stop timeout, kill the rest."""
        signo = self._stop_signal or signal.SIGTERM
        running = [child for child in self.children if child.proc is not None]
        if running:
            log.info(
                "stopping %d pscheduler process(es) (%s; killed if still running after %gs)",
                len(running),
                signal.Signals(signo).name,
                self.stop_timeout,
            )
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signo)
        deadline = time.monotonic() + self.stop_timeout
        code = fatal or 0
        while running:
            for child in list(running):
                assert child.proc is not None
                ended = child.proc.poll()
                if ended is None:
                    continue
                running.remove(child)
                log.info("%s %s", child, how_it_ended(ended))
                child.proc = None
                if ended > 0 and not code:
                    code = ended
            if running and time.monotonic() >= deadline:
                for child in running:
                    assert child.proc is not None
                    log.warning("%s still running after %gs; killing it", child, self.stop_timeout)
                    child.proc.kill()
                    child.proc.wait()
                    child.proc = None
                break
            if running:
                self._sleep(min(TICK, deadline - time.monotonic()))
        self._forward_reports()
        log.info("pscheduler supervisor stopped")
        return code

    # -- signals --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_noted(self) -> Iterator[None]:
        """Note SIGTERM, SIGINT and SIGHUP (hupper's worker leaves SIGHUP to
        hupper); any signal, SIGCHLD included, wakes :meth:`_sleep`."""
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGCHLD]
        if not hupper.is_active():
            wanted.append(signal.SIGHUP)
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._wakeup = read
        previous = {signo: signal.signal(signo, self._note) for signo in wanted}
        previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            for signo, handler in previous.items():
                signal.signal(signo, handler)
            os.close(read)
            os.close(write)

    def _note(self, signo: int, frame: FrameType | None) -> None:
        # Only note it: starting, stopping and logging happen in the main loop.
        if signo in (signal.SIGTERM, signal.SIGINT) and self._stop_signal is None:
            self._stop_signal = signo
        elif signo == signal.SIGHUP:
            self._hangup = True

    def _sleep(self, seconds: float) -> None:
        select.select([self._wakeup], [], [], max(seconds, 0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup, 512):
                pass
        self._forward_reports()

    # -- --reload -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reports_read(self) -> Iterator[None]:
        """Under hupper: a directory for the children's :class:`ModuleReport`."""
        if not hupper.is_active():
            yield
            return
        with tempfile.TemporaryDirectory(prefix="pscheduler-watch-") as path:
            self._reports = path
            try:
                yield
            finally:
                self._reports = None

    def _forward_reports(self) -> None:
        """Hand the files the children reported since the last call to hupper."""
        if self._reports is None:
            return
        paths: list[str] = []
        for index, offset in self._read.items():
            try:
                with open(os.path.join(self._reports, str(index)), "rb") as report:
                    report.seek(offset)
                    text = report.read()
            except FileNotFoundError:
                continue
            complete = text[: text.rfind(b"\n") + 1]  # a line being written waits for the next call
            self._read[index] = offset + len(complete)
            paths += complete.decode("utf-8").splitlines()
        if paths:
            hupper.get_reloader().watch_files(paths)
