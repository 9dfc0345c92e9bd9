"""Fixtures shared by the test suite: real services and isolated settings.

Service-backed fixtures skip when the service is unreachable on a user's
machine, and fail when ``CI=true`` (CI must run everything).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemons import wait_until

#: The producer's fixtures (app_settings, scheduler), for the web side's tests and others.
pytest_plugins = ["producers"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

SERVICES = {
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
    "postgresql": ("127.0.0.1", 5432),
}


def service_up(name: str) -> bool:
    host, port = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Skip (or, in CI, fail) the calling test when *name* is unreachable."""
    if service_up(name):
        return
    host, port = SERVICES[name]
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: service-backed tests must run)")
    pytest.skip(message)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tmp_var(tmp_path: Path) -> Path:
    var = tmp_path / "var"
    var.mkdir()
    return var


def broker_url(kind: str, var: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{var}/broker.sqlite"
    if kind == "redis":
        require_service("redis")
        return REDIS_URL
    if kind == "rabbitmq":
        require_service("rabbitmq")
        return AMQP_URL
    raise ValueError(kind)


def jobstore_url(kind: str, var: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{var}/jobs.sqlite"
    if kind == "postgresql":
        require_service("postgresql")
        return POSTGRES_URL
    raise ValueError(kind)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll *predicate* every 10 ms until it is true (:func:`daemons.wait_until`)."""
    return wait_until(predicate, timeout=timeout, interval=0.01)


def run_combined(settings: dict[str, str], then: Callable[[Any], Any] | None = None) -> None:
    """Build an application with *settings* in combined mode, run one job to
    its end through it (so the scheduler has made its tables), call
    ``then(scheduler)``, and shut the scheduler down."""
    from pyramid.config import Configurator

    from integration.sampleapp import jobs

    with Configurator(settings={**settings, "scheduler.combined": "true"}) as config:
        config.include("pyramid_scheduler")
    config.make_wsgi_app()
    scheduler = config.registry.scheduler
    try:
        job_id = scheduler.add_async_job(jobs.noop, args=[1])
        wait_for(lambda: (scheduler.get_job(job_id) or {}).get("status") == "done", timeout=20)
        if then is not None:
            then(scheduler)
    finally:
        scheduler.shutdown()


def make_settings(var: Path, broker: str = "sqlite", store: str = "sqlite", **extra: Any) -> dict[str, str]:
    """Pyramid settings for an isolated scheduler: unique queue and table
    prefixes, so tests sharing a Redis, RabbitMQ or PostgreSQL never meet."""
    tag = unique()
    settings = {
        "scheduler.combined": "false",
        "scheduler.queues": "jobs",
        "scheduler.broker.url": broker_url(broker, var),
        "scheduler.broker.queue_prefix": f"test.{tag}.",
        "scheduler.jobstore.url": jobstore_url(store, var),
        "scheduler.jobstore.tablename_prefix": f"{tag}_",
        "scheduler.lease.ttl": "3",
    }
    settings.update({k if k.startswith("scheduler.") else f"scheduler.{k}": str(v) for k, v in extra.items()})
    return settings


@pytest.fixture(params=["sqlite", "redis", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def drop_tables() -> Iterator[list[tuple[str, str]]]:
    """Tests append (jobstore_url, tablename_prefix); their tables are dropped after."""
    made: list[tuple[str, str]] = []
    yield made
    import sqlalchemy as sa

    for url, prefix in made:
        if not url.startswith("postgresql"):
            continue
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                names = conn.execute(
                    sa.text("select tablename from pg_tables where tablename like :p"), {"p": f"{prefix.lower()}%"}
                ).scalars()
                for name in list(names):
                    conn.execute(sa.text(f'drop table if exists "{name}" cascade'))
        finally:
            engine.dispose()
