"""Real ``pscheduler`` processes for the tests: INI files, start, wait, kill.

The daemon loads ``integration.sampleapp`` (``tests/`` goes on its
PYTHONPATH) with the ``scheduler.*`` settings the test gives. Its stdout and
stderr go to a log file that a failing test prints.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

TESTS = Path(__file__).resolve().parent
T = TypeVar("T")

#: Seconds a test waits for an outcome before failing.
DEADLINE = 30.0

LOGGING = """
[loggers]
keys = root, pyramid_scheduler

[handlers]
keys = console

[formatters]
keys = sample

[logger_root]
level = WARNING
handlers = console

[logger_pyramid_scheduler]
level = INFO
handlers =
qualname = pyramid_scheduler

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = sample

[formatter_sample]
format = SAMPLELOG %(asctime)s %(levelname)s [%(name)s][%(threadName)s] %(message)s
"""


def write_ini(
    path: Path, settings: Mapping[str, str], app: str = "call:integration.sampleapp:main", name: str = "main"
) -> Path:
    """An INI file with an ``[app:NAME]`` of *settings* and logging to stderr."""
    lines = [f"[app:{name}]", f"use = {app}"]
    lines += [f"{key} = {str(value).replace('%', '%%')}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n" + LOGGING, encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pscheduler_argv(script: bool = False) -> list[str]:
    """How to run pscheduler: ``python -m pyramid_scheduler.scripts``, or the
    installed console script when *script* is true."""
    if script:
        path = Path(sys.executable).parent / "pscheduler"
        if path.exists():
            return [str(path)]
    return [sys.executable, "-m", "pyramid_scheduler.scripts"]


def wait_until(
    predicate: Callable[[], T],
    what: str = "the condition",
    timeout: float = DEADLINE,
    interval: float = 0.05,
    alive: Iterable[Daemon] = (),
) -> T:
    """Poll *predicate* until it returns something true and return that.

    Fails after *timeout* seconds, or as soon as one of the *alive* daemons
    has exited (with its log).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for daemon in alive:
            if not daemon.alive:
                pytest.fail(
                    f"while waiting for {what}: pscheduler pid {daemon.pid} exited with "
                    f"{daemon.proc.returncode}\n{daemon.log()}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


class Daemon:
    """A ``pscheduler`` subprocess in a process group of its own; its stdout
    and stderr go to *log_path*; *env* is added to the environment."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), environ.get("PYTHONPATH")]))
        environ["PYTHONUNBUFFERED"] = "1"
        for name in ("PSCHEDULER_PROCESS", "PSCHEDULER_SUPERVISOR", "PSCHEDULER_WATCH"):
            environ.pop(name, None)  # the test runs under a supervisor: its daemons do not
        environ.update(env or {})
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=environ,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )

    @classmethod
    def start(
        cls,
        ini: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        script: bool = False,
        preexec_fn: Callable[[], object] | None = None,
    ) -> Daemon:
        """``pscheduler INI *args``, logging next to *ini*; *preexec_fn* runs
        in the child before it starts (e.g. to set resource limits)."""
        log_path = ini.with_name(f"{ini.stem}.{time.monotonic_ns()}.log")
        return cls([*pscheduler_argv(script), str(ini), *args], log_path, ini.parent, env, preexec_fn)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = DEADLINE) -> str:
        """Wait until *text* is in the log; the log."""

        def found() -> str | None:
            log = self.log()
            return log if text in log else None

        return wait_until(found, f"{text!r} in the log of pscheduler pid {self.pid}", timeout, alive=(self,))

    def wait_consuming(self, timeout: float = DEADLINE) -> Daemon:
        """Wait until the daemon holds its lease and consumes."""
        self.wait_log("running queues", timeout)
        return self

    def send(self, signo: int) -> None:
        self.proc.send_signal(signo)

    def wait(self, timeout: float = DEADLINE) -> int:
        """Wait for the process to exit; its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pscheduler pid {self.pid} still running after {timeout:g}s\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.alive:
            self.send(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon (and anything it started) and reap it."""
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def close(self) -> None:
        if self.alive:
            # SIGCONT first: a test may have left it stopped.
            for signo in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, signo)
                except ProcessLookupError:
                    break
            self.proc.wait(10)
        self._log_file.close()
