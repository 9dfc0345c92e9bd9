"""The default posture (issue 16, item 5): a process that runs jobs from a
broker other machines can reach needs ``scheduler.secret`` or
``scheduler.allowed_modules``, or says ``scheduler.insecure = true``.

A 0.3.4 INI on one machine (SQLite files, Redis or RabbitMQ on loopback)
starts as before. The daemon is a real ``pscheduler`` reaching Redis through a
TCP proxy on this machine's own non-loopback address.
"""

from __future__ import annotations

import os
import socket
import stat
import uuid
from pathlib import Path

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from tcpproxy import TCPProxy

from conftest import make_settings, require_service
from integration.conftest import make_harness  # noqa: F401 - the fixture
from integration.sampleapp import jobs
from pyramid_scheduler.demo import SECRET_ENV
from pyramid_scheduler.demo import main as demo_main
from pyramid_scheduler.scripts import EXIT_INSECURE
from pyramid_scheduler.settings import parse_settings, posture_problem

LOCAL = [
    "sqlite:///var/broker.sqlite",
    "sqlite://",
    "sqla+sqlite:////srv/broker.sqlite",
    "kombu.transport.sqlalchemy:Transport+sqlite:///var/b.sqlite",
    "sqla+postgresql://u:pw@127.0.0.1/db",
    "redis://127.0.0.1:6379/0",
    "redis://localhost/0",
    "redis://:pw@[::1]:6379/0",
    "redis://127.0.1.1/0",
    "amqp://guest:guest@localhost:5672//",
    "amqp://",
    "memory://",
    "redis+socket:///run/redis.sock",
    "sentinel://:pw@127.0.0.1:26379;sentinel://:pw@localhost:26380",
]
REMOTE = [
    "redis://10.0.0.5:6379/0",
    "redis://cache.internal/0",
    "amqp://u:pw@rabbit//",
    "sqla+postgresql://u:pw@db.internal/app",
    "postgresql://u@10.1.2.3/app",
    "sentinel://:pw@127.0.0.1:26379;sentinel://:pw@10.0.0.6:26379",
    "redis://[2001:db8::1]:6379/0",
    "redis://0.0.0.0/0",
]


@pytest.mark.parametrize("url", LOCAL)
def test_a_broker_on_this_machine_needs_nothing(url):
    assert posture_problem(parse_settings({"scheduler.broker.url": url})) is None


@pytest.mark.parametrize("url", REMOTE)
def test_a_remote_broker_needs_a_secret_or_an_allowlist_or_insecure(url):
    problem = posture_problem(parse_settings({"scheduler.broker.url": url}))
    assert problem and "scheduler.secret" in problem and "scheduler.insecure = true" in problem
    assert ":pw@" not in problem  # the broker URL is masked
    for extra in (
        {"scheduler.secret": "s" * 32},
        {"scheduler.allowed_modules": "myapp.jobs"},
        {"scheduler.insecure": "true"},
    ):
        assert posture_problem(parse_settings({"scheduler.broker.url": url, **extra})) is None


def test_insecure_is_a_boolean():
    with pytest.raises(ConfigurationError, match="scheduler.insecure"):
        parse_settings({"scheduler.insecure": "maybe"})


def test_combined_mode_refuses_to_run_jobs_from_a_remote_broker_unprotected(tmp_var):
    settings = make_settings(tmp_var, combined="true")
    settings["scheduler.broker.url"] = "redis://203.0.113.7:6379/0"  # TEST-NET-3: never reached
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler")
    with pytest.raises(ConfigurationError, match="refusing to run jobs: the broker redis://203.0.113.7"):
        config.make_wsgi_app()


def _outward_address() -> str | None:
    """This machine's own non-loopback IPv4 address, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.123", 9))  # no packet is sent
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def remote_redis():
    """A Redis URL that names this machine by a non-loopback address."""
    require_service("redis")
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    proxy = TCPProxy(("127.0.0.1", 6379), host=address)
    yield f"redis://{address}:{proxy.port}/15"
    proxy.close()


@pytest.mark.integration
@pytest.mark.slow
def test_pscheduler_refuses_a_remote_broker_unprotected_and_runs_with_insecure(make_harness, remote_redis):  # noqa: F811
    harness = make_harness(broker="redis")
    bare = {"scheduler.broker.url": remote_redis, "scheduler.secret": None, "scheduler.allowed_modules": None}

    code, log = harness.run(ini=harness.write_ini(harness.app_settings(**bare)), timeout=60)
    assert code == EXIT_INSECURE, log
    assert "refusing to run jobs" in log and "scheduler.insecure = true" in log

    insecure = {**bare, "scheduler.insecure": "true"}
    daemon = harness.start(ini=harness.write_ini(harness.app_settings(**insecure)))
    proxy = harness.proxy(**insecure)
    tag = f"insecure-{uuid.uuid4().hex[:6]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, tag])
    harness.wait_runs(tag, alive=(daemon,))
    assert "scheduler.secret is not set" in daemon.log()  # still warned
    assert daemon.terminate() == 0

    signed = {"scheduler.broker.url": remote_redis, "scheduler.allowed_modules": None}
    daemon = harness.start(ini=harness.write_ini(harness.app_settings(**signed)))
    proxy = harness.proxy(**signed)
    tag = f"signed-{uuid.uuid4().hex[:6]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, tag])
    harness.wait_runs(tag, alive=(daemon,))
    assert daemon.terminate() == 0


# -- the demo's secret ----------------------------------------------------------------


def _demo_settings(var: Path) -> dict[str, str]:
    settings = make_settings(var, allowed_modules="pyramid_scheduler.demo")
    settings["demo.title"] = "demo"
    return settings


def test_the_demo_generates_its_secret_into_var_once(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    (tmp_path / "var").mkdir()
    first = demo_main({"here": str(tmp_path)}, **_demo_settings(tmp_path / "var"))
    second = demo_main({"here": str(tmp_path)}, **_demo_settings(tmp_path / "var"))
    try:
        path = tmp_path / "var" / "scheduler-secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()
        assert len(secret) == 64
        assert first.registry.scheduler.settings.secret == secret.encode()
        assert second.registry.scheduler.settings.secret == secret.encode()
        assert [p.name for p in (tmp_path / "var").iterdir() if p.name.startswith(".")] == []
    finally:
        first.registry.scheduler.shutdown()
        second.registry.scheduler.shutdown()


def test_the_demo_takes_its_secret_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-0123456789")
    (tmp_path / "var").mkdir()
    app = demo_main({"here": str(tmp_path)}, **_demo_settings(tmp_path / "var"))
    try:
        assert app.registry.scheduler.settings.secret == b"from-the-environment-0123456789"
        assert not (tmp_path / "var" / "scheduler-secret").exists()
    finally:
        app.registry.scheduler.shutdown()


def test_development_ini_ships_no_secret():
    ini = Path(__file__).resolve().parents[2] / "development.ini"
    assert not [line for line in ini.read_text().splitlines() if line.startswith("scheduler.secret")]
    assert os.path.exists(ini)
