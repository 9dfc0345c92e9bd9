"""The package as a user installs it, in a virtualenv of its own.

The test environment has every extra installed, so it cannot see what a user
of the base package sees (a transport that imports a client library the base
package does not declare, say). Here a fresh virtualenv gets the package
built from this checkout with no extra but ``demo`` (waitress, for
``pserve``), on the newest releases its version ranges allow and on the
lowest ones (``constraints/lowest.txt``); then the demo's daemon and web
server run from ``development.ini`` on the embedded SQLite default, a job
added from a separate process runs, a Redis URL is refused naming the extra,
and ``postgresql://`` works with psycopg2 as the only PostgreSQL driver.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IN_CI, POSTGRES_URL, require_service

ROOT = Path(__file__).resolve().parent.parent
LOWEST = ROOT / "constraints" / "lowest.txt"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

#: Adds one job from a process of its own (``bootstrap``, as a script of the
#: application would), waits for its record to say it ran, prints the record.
ADD_AND_WAIT = """
import json, sys, time
from pyramid.paster import bootstrap
with bootstrap(sys.argv[1]) as env:
    scheduler = env["registry"].scheduler
    job_id = scheduler.add_async_job("pyramid_scheduler.demo.jobs:say", args=[sys.argv[2]], immediate=True)
    deadline = time.monotonic() + float(sys.argv[3])
    job = None
    while time.monotonic() < deadline:
        job = scheduler.get_job(job_id)
        if sys.argv[4] == "wait" and (job is None or job["status"] not in ("done", "failed")):
            time.sleep(0.1)
            continue
        break
    print(json.dumps({"id": job_id, "job": job}, default=str))
    scheduler.close()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment without what would make the virtualenv import this
    checkout (or the test environment's packages) instead of its own."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _run(argv: list[str | Path], timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=_clean_env(), **kwargs
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built from this checkout, once (no files left in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(
        ROOT,
        source,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", "_build", ".pytest_cache"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    done = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, source])
    assert done.returncode == 0, done.stdout + done.stderr
    # setuptools' warnings (deprecated metadata, package data outside the packages)
    # are what a user sees at every install: there must be none.
    assert "Warning" not in done.stderr, done.stderr
    (built,) = out.glob("pyramid_scheduler-*.whl")
    return built


class Venv:
    def __init__(self, path: Path, versions: str) -> None:
        self.path = path
        self.versions = versions
        self.bin = path / ("Scripts" if os.name == "nt" else "bin")
        self.python = self.bin / "python"

    def pip(self, *args: str | Path) -> None:
        argv: list[str | Path] = [self.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if self.versions == "lowest":
            argv += ["-c", LOWEST]
        done = _run([*argv, *args])
        if (
            done.returncode != 0
            and not IN_CI
            and any(
                sign in done.stderr
                for sign in ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution")
            )
        ):
            pytest.skip(f"the package index is not reachable: {done.stderr.strip().splitlines()[-1]}")
        assert done.returncode == 0, f"pip install {args} ({self.versions}):\n{done.stdout}{done.stderr}"

    def imports(self, module: str) -> bool:
        return _run([self.python, "-c", f"import {module}"]).returncode == 0

    def version(self, dist: str) -> str:
        done = _run([self.python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"])
        return done.stdout.strip()


@pytest.fixture(scope="module", params=["newest", "lowest"])
def venv(request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    path = tmp_path_factory.mktemp(f"venv-{request.param}")
    done = _run([sys.executable, "-m", "venv", path])
    assert done.returncode == 0, done.stderr
    env = Venv(path, request.param)
    env.pip(f"pyramid_scheduler[demo] @ {wheel.as_uri()}")
    if request.param == "lowest":
        pins = dict(line.split("==") for line in LOWEST.read_text().split() if "==" in line)
        for dist in ("pyramid", "APScheduler", "kombu", "SQLAlchemy"):
            assert env.version(dist) == pins[dist], f"{dist}: constraints/lowest.txt not applied"
    return env


class App:
    """development.ini copied into a folder of its own, on a free port."""

    def __init__(self, folder: Path, settings: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = _free_port()
        text = (ROOT / "development.ini").read_text(encoding="utf-8")
        text = text.replace("listen = 127.0.0.1:6543", f"listen = 127.0.0.1:{self.port}")
        for key, value in (settings or {}).items():
            lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
            lines.insert(lines.index("[app:main]") + 1, f"{key} = {value}")
            text = "\n".join(lines) + "\n"
        self.ini = folder / "development.ini"
        self.ini.write_text(text, encoding="utf-8")
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, command: Path) -> subprocess.Popen[bytes]:
        log = self.folder / f"{command.name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(command), str(self.ini)], cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, env=_clean_env()
            )
        self.procs.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name} (exit {proc.poll()}):\n{log.read_text(errors='replace')}" for proc, log in self.procs
        )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            body = response.read()
        return json.loads(body) if path.endswith(".json") else body.decode()

    def wait(self, what: str, predicate: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, _ in self.procs:
                assert proc.poll() is None, f"a process exited while waiting for {what}:\n{self.logs()}"
            try:
                found = predicate()
            except (OSError, ValueError):
                found = None
            if found:
                return found
            time.sleep(0.1)
        pytest.fail(f"{what}: not within {timeout}s\n{self.logs()}")

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[list[App]]:
    apps: list[App] = []
    yield apps
    for each in apps:
        each.stop()


def _add_job(venv: Venv, app: App, message: str, wait: bool) -> dict[str, Any]:
    script = app.folder / "add_job.py"
    script.write_text(ADD_AND_WAIT, encoding="utf-8")
    done = _run([venv.python, script, app.ini, message, "60", "wait" if wait else "no"], timeout=120, cwd=app.folder)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{app.logs()}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_demo_runs_a_job_added_from_another_process(venv: Venv, app: list[App], tmp_path: Path) -> None:
    # The base package brings no broker client: what it runs, it runs without one.
    assert not venv.imports("redis"), "the base package must not need redis"
    demo = App(tmp_path / "demo")
    app.append(demo)
    daemon = demo.start(venv.bin / "pscheduler")
    demo.start(venv.bin / "pserve")

    def daemon_holds_queue() -> bool:
        daemons = demo.get("/daemons.json")["daemons"]
        return all(d["active"] and d["owner"].split(":")[1] == str(daemon.pid) for d in daemons)

    demo.wait("the page answering with the daemon holding its queue", daemon_holds_queue)
    assert "pyramid_scheduler demo" in demo.get("/")

    # The demo's job records are behind its login (the dashboard): read them as a script would.
    job = _add_job(venv, demo, f"fresh install {venv.versions}", wait=True)["job"]
    assert job["status"] == "done", job
    assert job["result"]["message"] == f"fresh install {venv.versions}"
    assert job["result"]["pid"] == daemon.pid  # run by the daemon, not by the adding process
    demo.stop()
    assert daemon.returncode == 0, demo.logs()
    started = demo.logs()
    # The start-up line names the broker, the job store (masked), the queues and the role.
    assert "running queues default as a daemon" in started
    assert f"broker sqlite:///{demo.folder}/var/scheduler-broker.sqlite" in started


def test_a_redis_url_without_the_extra_names_the_extra(venv: Venv, tmp_path: Path) -> None:
    demo = App(tmp_path / "redis", {"scheduler.broker.url": "redis://:hunter2@127.0.0.1:6379/0"})
    done = _run([venv.bin / "pscheduler", demo.ini], timeout=60, cwd=demo.folder)
    output = done.stdout + done.stderr
    assert done.returncode == 20, output
    assert "pip install 'pyramid_scheduler[redis]'" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


def test_postgresql_url_with_psycopg2_as_the_only_driver(venv: Venv, app: list[App], tmp_path: Path) -> None:
    require_service("postgresql")
    venv.pip("psycopg2-binary")
    assert not venv.imports("psycopg"), "psycopg 3 must not be there for this test"
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    demo = App(tmp_path / "pg", {"scheduler.jobstore.url": url, "scheduler.jobstore.tablename_prefix": prefix})
    app.append(demo)
    demo.start(venv.bin / "pscheduler")
    try:
        added = _add_job(venv, demo, "on psycopg2", wait=True)
        assert added["job"] is not None and added["job"]["status"] == "done", (added, demo.logs())
        assert added["job"]["result"]["message"] == "on psycopg2"
        # SQLAlchemy 2.0's default driver is psycopg2; 2.1's is psycopg 3, so there it is named.
        driver = "postgresql://" if venv.version("SQLAlchemy").startswith("2.0.") else "postgresql+psycopg2://"
        assert f"job store {driver}{url.split('://', 1)[1]}" in demo.logs()
    finally:
        demo.stop()
        _drop_tables(venv, url, prefix)


def _drop_tables(venv: Venv, url: str, prefix: str) -> None:
    script = (
        "import sys, sqlalchemy as sa\n"
        "engine = sa.create_engine(sys.argv[1].replace('postgresql://', 'postgresql+psycopg2://'))\n"
        "with engine.begin() as conn:\n"
        "    names = conn.execute(sa.text('select tablename from pg_tables where tablename like :p'),\n"
        "                         {'p': sys.argv[2] + '%'}).scalars().all()\n"
        "    for name in names:\n"
        "        conn.execute(sa.text('drop table if exists \"%s\" cascade' % name))\n"
    )
    _run([venv.python, "-c", script, url, prefix.lower()], timeout=60)
