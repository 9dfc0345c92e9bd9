"""Fixtures of the integration tests: INI files, ``pscheduler`` subprocesses,
the web side's scheduler proxy, and polling helpers.

Each test gets a :class:`Harness` from ``make_harness(broker, store, **extra)``.
It writes INI files for the sample application (``integration.sampleapp``)
into the test's ``tmp_path``, starts daemons whose output goes to a log file
there, and builds web-side proxies with the very same settings. Teardown
kills every daemon still running (its whole process group), closes the
proxies, deletes the test's broker queues on Redis/RabbitMQ and prints the
daemons' logs (pytest shows them when the test fails).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyramid.config import Configurator

from conftest import make_settings
from daemons import DEADLINE, Daemon, pscheduler_argv, wait_until, write_ini
from integration.sampleapp import jobs

__all__ = ["DEADLINE", "Daemon", "Harness", "wait_until"]


class Harness:
    """One test's daemons, proxies, INI files and oracle."""

    def __init__(self, tmp_path: Path, settings: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.tag = uuid.uuid4().hex[:8]
        self.oracle = str(tmp_path / "oracle.sqlite")
        self.marker = f"registry-{self.tag}"
        self.settings = {**settings, "sampleapp.oracle": self.oracle, "sampleapp.marker": self.marker}
        self.daemons: list[Daemon] = []
        self.proxies: list[Any] = []
        self._inis = 0

    # -- configuration ----------------------------------------------------------------
    def app_settings(self, **overrides: str) -> dict[str, str]:
        """The settings, with ``scheduler.``/``sampleapp.`` keys overridden
        (a value of ``None`` removes the key)."""
        settings = dict(self.settings)
        for key, value in overrides.items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = value
        return settings

    def write_ini(self, settings: dict[str, str] | None = None) -> Path:
        """An INI file for the sample application with *settings* (default: the
        harness's), plus logging sections."""
        self._inis += 1
        return write_ini(self.tmp_path / f"app{self._inis}.ini", self.settings if settings is None else settings)

    # -- daemons ----------------------------------------------------------------------
    def start(
        self, *args: str, ini: Path | None = None, script: bool = False, env: dict[str, str] | None = None
    ) -> Daemon:
        """Start ``pscheduler INI *args`` in the background (*env* added to
        its environment, e.g. ``{"TZ": "Asia/Tokyo"}``)."""
        ini = ini or self.write_ini()
        index = len(self.daemons) + 1
        daemon = Daemon(
            [*pscheduler_argv(script), str(ini), *args], self.tmp_path / f"pscheduler-{index}.log", self.tmp_path, env
        )
        self.daemons.append(daemon)
        return daemon

    def run(self, *args: str, ini: Path | None = None, script: bool = False, timeout: float = 60) -> tuple[int, str]:
        """Run ``pscheduler INI *args`` to its end; (exit code, output)."""
        daemon = self.start(*args, ini=ini, script=script)
        code = daemon.wait(timeout)
        return code, daemon.log()

    # -- the web side -----------------------------------------------------------------
    def proxy(self, **overrides: str) -> Any:
        """``registry.scheduler`` of an application built with the same
        settings (as a web process would have)."""
        with Configurator(settings=self.app_settings(**overrides)) as config:
            config.include("pyramid_scheduler")
        proxy = config.registry.scheduler
        self.proxies.append(proxy)
        return proxy

    def start_slow(self, proxy: Any, daemon: Daemon, seconds: float) -> str:
        """Send a job that takes *seconds*; return its id once it has started."""
        slow_id = f"slow-{uuid.uuid4().hex[:8]}"
        proxy.add_async_job(jobs.slow, args=[self.oracle, slow_id, seconds], id=slow_id)
        wait_until(lambda: self.runs(slow_id), "the slow job to start", alive=(daemon,))
        return slow_id

    # -- waiting for outcomes ---------------------------------------------------------
    def runs(self, tag: str | None = None) -> list[dict[str, Any]]:
        return jobs.runs(self.oracle, tag)

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        rows = jobs.events(self.oracle)
        return rows if job_id is None else [row for row in rows if row["job_id"] == job_id]

    def wait_runs(
        self, tag: str, count: int = 1, timeout: float = DEADLINE, alive: tuple[Daemon, ...] = ()
    ) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (lambda rows: rows if len(rows) >= count else None)(self.runs(tag)),
            f"{count} run(s) of {tag} in the oracle",
            timeout,
            alive=alive,
        )

    def wait_job(
        self, proxy: Any, job_id: str, statuses: set[str], timeout: float = DEADLINE, alive: tuple[Daemon, ...] = ()
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            record = proxy.get_job(job_id)
            return record if record is not None and record["status"] in statuses else None

        try:
            return wait_until(check, f"job {job_id} to reach {sorted(statuses)}", timeout, alive=alive)
        except pytest.fail.Exception:
            print(f"last record of {job_id}: {proxy.get_job(job_id)}")
            raise

    def start_active(self, proxy: Any, count: int) -> list[Daemon]:
        """Start *count* daemons once *proxy* made the tables (before they
        race to make them), and wait until each runs its queues."""
        assert proxy.get_job("no-such-job") is None  # the tables
        daemons = [self.start() for _ in range(count)]
        for daemon in daemons:
            self.wait_active(proxy, daemon)
        return daemons

    def wait_active(self, proxy: Any, daemon: Daemon, timeout: float = DEADLINE) -> None:
        """Wait until *daemon* is among the live daemons of all its queues."""

        def check() -> bool:
            queues = proxy.get_daemons()
            return all(any(row["pid"] == daemon.pid for row in d["daemons"]) for d in queues)

        wait_until(check, f"pscheduler pid {daemon.pid} to run its queues", timeout, alive=(daemon,))

    def wait_log(self, daemon: Daemon, text: str, timeout: float = DEADLINE) -> str:
        return daemon.wait_log(text, timeout)

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        for proxy in self.proxies:
            proxy.close()
        for daemon in self.daemons:
            print(f"===== {' '.join(daemon.argv)} (pid {daemon.pid}, exit {daemon.proc.returncode})")
            print(daemon.log())
        self._delete_broker_queues()

    def _delete_broker_queues(self) -> None:
        from pyramid_scheduler.brokers.connection import make_connection, make_queue
        from pyramid_scheduler.settings import parse_settings

        settings = parse_settings(self.settings)
        if settings.broker.kind == "sql":
            return
        try:
            with make_connection(settings) as conn:
                channel = conn.default_channel
                for name in settings.queues:
                    make_queue(settings, name)(channel).delete()
        except Exception as exc:  # the test's outcome matters more than the cleanup
            print(f"could not delete the test's broker queues: {exc}")


@pytest.fixture
def make_harness(tmp_path: Path, drop_tables: list[tuple[str, str]]) -> Iterator[Callable[..., Harness]]:
    """``make_harness(broker="sqlite", store="sqlite", **extra_settings)``."""
    made: list[Harness] = []

    def make(broker: str = "sqlite", store: str = "sqlite", **extra: Any) -> Harness:
        var = tmp_path / "var"
        var.mkdir(exist_ok=True)
        # Production-like: signed messages, jobs only from the sample application.
        extra.setdefault("secret", "integration-secret-0123456789abcdef")
        extra.setdefault("allowed_modules", "integration.sampleapp")
        settings = make_settings(var, broker, store, **extra)
        drop_tables.append((settings["scheduler.jobstore.url"], settings["scheduler.jobstore.tablename_prefix"]))
        harness = Harness(tmp_path, settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    """A harness on the embedded default: SQLite broker and SQLite job store."""
    return make_harness()
