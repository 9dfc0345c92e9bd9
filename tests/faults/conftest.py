"""The fault suite uses the integration tests' harness, plus a private
``redis-server`` a test can kill, pause and start again."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import IN_CI
from daemons import free_port
from integration.conftest import harness, make_harness, wait_until  # noqa: F401 - fixtures


class PrivateRedis:
    """A ``redis-server`` of the test's own on *port* (default: a free one)."""

    def __init__(self, folder: Path, aof: bool, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: service-backed tests must run)")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        self.aof = aof
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
        ]
        if self.aof:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, f"redis-server on port {self.port}", timeout=15)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def clients(self) -> int:
        """Connections Redis has open, not counting the one asking."""
        with self.client() as client:
            return len(client.client_list()) - 1

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """``private_redis(aof, port=None, start=True)``: killed after the test."""
    made: list[PrivateRedis] = []

    def make(aof: bool = False, port: int | None = None, start: bool = True) -> PrivateRedis:
        folder = tmp_path / f"redis-{len(made)}"
        folder.mkdir()
        server = PrivateRedis(folder, aof, port)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.kill()


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (``initdb`` in a temporary
    folder, run as the ``postgres`` user), on a free port: a test may restart
    it without touching the shared server other tests use."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not binaries or os.geteuid() != 0 or shutil.which("runuser") is None:
            message = "a private PostgreSQL needs the server binaries, root and runuser"
            if IN_CI:
                pytest.fail(f"{message} (CI=true: service-backed tests must run)")
            pytest.skip(message)
        self.bin = Path(binaries[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="pyramid-scheduler-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.folder,
        )

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.folder / "log"
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-w", "-l", log, action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self, down: float = 0.0) -> None:
        """Stop (fast: connections are cut), stay down *down* seconds, start."""
        self._ctl("stop", "-m", "fast")
        time.sleep(down)
        self._ctl("start")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.stop()
