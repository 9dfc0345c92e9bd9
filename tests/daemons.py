"""Real ``pscheduler`` processes for the tests: INI files, start, kill, wait.

The daemon loads ``integration.sampleapp`` (``tests/`` goes on its
PYTHONPATH), with the ``scheduler.*`` settings the test gives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

TESTS = Path(__file__).resolve().parent

T = TypeVar("T")

LOGGING = """
[loggers]
keys = root, pyramid_scheduler

[handlers]
keys = console

[formatters]
keys = generic

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
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s][%(threadName)s] %(message)s
"""


def write_ini(path: Path, settings: Mapping[str, str], app: str = "call:integration.sampleapp:main") -> Path:
    """An INI file with an ``[app:main]`` of *settings* and logging to stderr."""
    lines = ["[app:main]", f"use = {app}"]
    lines += [f"{key} = {str(value).replace('%', '%%')}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n" + LOGGING)
    return path


def wait_until(check: Callable[[], T], timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.05) -> T:
    """Poll *check* until it returns something truthy; fail after *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


class Daemon:
    """One ``pscheduler`` subprocess, its output in a log file."""

    def __init__(self, ini: Path, *args: str, env: Mapping[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.log_path = log or ini.with_suffix(f".{time.monotonic_ns()}.log")
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), environ.get("PYTHONPATH")]))
        environ.update(env or {})
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pyramid_scheduler.scripts", str(ini), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=environ, cwd=ini.parent)

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_active(self, timeout: float = 30.0) -> Daemon:
        """Wait until the daemon holds its lease and consumes."""
        wait_until(lambda: "running queues" in self.output or not self.running(), timeout,
                   "the daemon to start")
        assert self.running(), f"pscheduler exited with {self.proc.returncode}:\n{self.output}"
        return self

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def terminate(self, timeout: float = 60.0) -> int:
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        if self.running():
            self.proc.kill()
        return self.wait(30)

    def close(self) -> None:
        self.kill()
        self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
