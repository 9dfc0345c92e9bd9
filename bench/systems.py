"""The systems the bench drives, and its small tools.

:class:`Ours` (pyramid_scheduler on a broker, with a ``pscheduler`` worker),
:class:`Raw` (the broker driven directly, :mod:`bench.raw`),
:class:`CeleryApp` (Celery on the same broker), :class:`DramatiqApp` and
:class:`HueyApp` (Dramatiq and huey on the same Redis, for the scale-out
part), the worker processes they start, and the timing helpers
:mod:`bench.run`, :mod:`bench.scaleout` and :mod:`bench.profile` share.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import jobs
from bench.raw import Producer

ROOT = Path(__file__).resolve().parent.parent
DOCS_OUT = ROOT / "docs" / "_bench"
JSON_OUT = ROOT / "bench" / "results.json"

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SERVICES = {"redis": ("127.0.0.1", 6379), "rabbitmq": ("127.0.0.1", 5672), "postgresql": ("127.0.0.1", 5432)}

#: The run-now latency test sends at this steady rate.
RATE = 200.0
#: Peers the bench does not run: the figures of the issue's table (taken on
#: the same kind of machine, another day). Only the targets that name them use them.
REFERENCE = {"huey run-now p50 (ms)": 1.06, "Dramatiq drain (jobs/s)": 1700.0}

LOGGING = """
[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = plain

[formatter_plain]
format = %(asctime)s %(levelname)s [%(name)s] %(message)s
"""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def service_up(name: str) -> bool:
    try:
        with socket.create_connection(SERVICES[name], timeout=1):
            return True
    except OSError:
        return False


# -- statistics -------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(seconds: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds of *seconds*."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else float("nan"),
    }


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


# -- the systems under test -------------------------------------------------------------


class Worker:
    """A subprocess in its own process group, output to a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
        environ.update(env or {})
        self.started = time.time()
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=environ,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        import psutil

        try:
            return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20
        except psutil.Error:
            return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker and its children used so far."""
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            total = sum(proc.cpu_times()[:2])
            for child in proc.children(recursive=True):
                total += sum(child.cpu_times()[:2])
            return float(total)
        except psutil.Error:
            return float("nan")

    def pause(self) -> None:
        """SIGSTOP the worker's process group (the worker and its children)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused worker would not act on SIGTERM
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


class System:
    """One thing to measure: ``enqueue`` a run-now job, maybe a date job,
    start and stop its worker."""

    def __init__(self, broker: str, tmp: Path, name: str, key: str) -> None:
        self.broker, self.tmp, self.name, self.key = broker, tmp, name, f"{key}-{broker}"

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        raise NotImplementedError

    def enqueue_tx(self, path: str, tag: str, sent: float) -> None:
        raise NotImplementedError

    has_tx = False
    has_date = True
    #: Has a run-now job that skips storing before the ack (ours: ``durable=False``).
    has_fast = False

    def enqueue_fast(self, path: str, tag: str, sent: float) -> None:
        raise NotImplementedError

    def enqueue_at(self, path: str, tag: str, when: float) -> None:
        raise NotImplementedError

    def enqueue_spin(self, path: str, tag: str, sent: float, loops: int) -> None:
        """Enqueue the CPU-bound job (:func:`bench.jobs.spin`)."""
        raise NotImplementedError

    def start_worker(self) -> Worker:
        raise NotImplementedError

    def close(self) -> None:
        pass


def ours_settings(broker: str, tmp: Path, tag: str) -> dict[str, str]:
    if broker == "sqlite":
        broker_url, store_url = f"sqlite:///{tmp}/{tag}-broker.sqlite", f"sqlite:///{tmp}/{tag}-jobs.sqlite"
    else:
        broker_url, store_url = (REDIS_URL if broker == "redis" else AMQP_URL), POSTGRES_URL
    return {
        "scheduler.combined": "false",
        "scheduler.queues": "jobs",
        "scheduler.broker.url": broker_url,
        "scheduler.broker.queue_prefix": f"bench.{tag}.",
        "scheduler.jobstore.url": store_url,
        "scheduler.jobstore.tablename_prefix": f"{tag}_",
        "scheduler.secret": "bench-secret-0123456789abcdef",
        "scheduler.allowed_modules": "bench",
    }


class Ours(System):
    """pyramid_scheduler: the web side's ``registry.scheduler`` in this
    process, ``pscheduler`` as the worker."""

    has_tx = True

    def __init__(self, broker: str, tmp: Path, **settings: str) -> None:
        from pyramid.config import Configurator

        super().__init__(broker, tmp, "pyramid_scheduler", "ours")
        self.tag = f"b{uuid.uuid4().hex[:8]}"
        self.settings = ours_settings(broker, tmp, self.tag)
        self.settings.update({f"scheduler.{key}": value for key, value in settings.items()})
        with Configurator(settings=self.settings) as config:
            config.include("pyramid_scheduler")
        self.proxy = config.registry.scheduler
        self.ini = tmp / f"{self.key}.ini"
        lines = ["[app:main]", "use = call:bench.app:main"]
        lines += [f"{k} = {v.replace('%', '%%')}" for k, v in self.settings.items()]
        self.ini.write_text("\n".join(lines) + "\n" + LOGGING, encoding="utf-8")
        self.workers = 0

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        self.proxy.add_async_job(jobs.record, args=[path, tag, sent])

    def enqueue_tx(self, path: str, tag: str, sent: float) -> None:
        import transaction

        with transaction.manager:
            self.proxy.add_async_job(jobs.record, args=[path, tag, sent])

    has_fast = True

    def enqueue_fast(self, path: str, tag: str, sent: float) -> None:
        self.proxy.add_async_job(jobs.record, args=[path, tag, sent], durable=False)

    def enqueue_at(self, path: str, tag: str, when: float) -> None:
        self.proxy.add_date_job(jobs.record, when, args=[path, tag, when])

    def enqueue_spin(self, path: str, tag: str, sent: float, loops: int) -> None:
        self.proxy.add_async_job(jobs.spin, args=[path, tag, sent, loops])

    def start_worker(self, processes: int = 1) -> Worker:
        """A ``pscheduler`` (``--processes N`` when *processes* is above 1)."""
        self.workers += 1
        return Worker(
            [
                sys.executable,
                "-m",
                "pyramid_scheduler.scripts",
                *([f"--processes={processes}"] if processes > 1 else []),
                str(self.ini),
            ],
            self.tmp / f"{self.key}-{self.workers}.log",
        )

    def live_daemons(self) -> int:
        return sum(len(queue["daemons"]) for queue in self.proxy.get_daemons())

    def active(self) -> bool:
        return all(d["active"] for d in self.proxy.get_daemons())

    def close(self) -> None:
        from pyramid_scheduler.brokers.connection import make_connection, make_queue

        settings = self.proxy.settings
        self.proxy.close()
        if settings.broker.kind != "sql":
            try:
                with make_connection(settings) as conn:
                    for name in settings.queues:
                        make_queue(settings, name)(conn.default_channel).delete()
            except Exception as exc:  # noqa: BLE001 - cleanup only
                log(f"could not delete the bench queues: {exc}")
        if settings.jobstore_url and settings.jobstore_url.startswith("postgresql"):
            drop_tables(settings.jobstore_url, settings.jobstore_tablename_prefix)


def drop_tables(url: str, prefix: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            names = (
                conn.execute(
                    sa.text("select tablename from pg_tables where tablename like :p"), {"p": f"{prefix.lower()}%"}
                )
                .scalars()
                .all()
            )
            for name in names:
                conn.execute(sa.text(f'drop table if exists "{name}" cascade'))
    finally:
        engine.dispose()


def sample_body(path: str, tag: str, sent: float) -> bytes:
    """The message pyramid_scheduler would send for this run-now job."""
    from pyramid_scheduler.triggers.build import trigger_spec
    from pyramid_scheduler.wire.messages import JobRequest, new_id

    spec = trigger_spec("now", timezone.utc, run_date=datetime.now(timezone.utc))
    return JobRequest(
        op="add",
        id=new_id(),
        queue="jobs",
        func="bench.jobs:record",
        args=[path, tag, sent],
        kwargs={},
        trigger=spec,
        options={},
    ).encode()


class Raw(System):
    """The broker alone: :mod:`bench.raw`."""

    has_date = False

    def __init__(self, broker: str, tmp: Path) -> None:
        super().__init__(
            broker,
            tmp,
            {"redis": "redis-py LPUSH/BRPOP", "rabbitmq": "pika publish/consume", "sqlite": "sqlite3 insert/select"}[
                broker
            ],
            "raw",
        )
        self.kind = {"redis": "redis", "rabbitmq": "amqp", "sqlite": "sqlite"}[broker]
        self.queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
        self.url = {"redis": REDIS_URL, "rabbitmq": AMQP_URL, "sqlite": str(tmp / "raw.sqlite")}[broker]
        self.producer = Producer(self.kind, self.url, self.queue)
        self.template = json.loads(sample_body("", "", 0.0))

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        self.template["args"] = [path, tag, sent]
        self.producer.put(json.dumps(self.template, separators=(",", ":")).encode())

    def start_worker(self) -> Worker:
        return Worker(
            [sys.executable, "-m", "bench.raw", self.kind, self.url, self.queue], self.tmp / f"{self.key}.log"
        )

    def close(self) -> None:
        self.producer.close(delete=True)


class CeleryApp(System):
    """Celery 5 with the same broker: a ``celery worker -P solo`` subprocess
    (``-P prefork -c N`` for N processes)."""

    def __init__(self, broker: str, tmp: Path) -> None:
        super().__init__(broker, tmp, "Celery", "celery")
        self.queue = f"bench.celery.{uuid.uuid4().hex[:8]}"
        self.url = REDIS_URL if broker == "redis" else AMQP_URL
        os.environ["BENCH_CELERY_BROKER"] = self.url
        os.environ["BENCH_CELERY_QUEUE"] = self.queue
        from bench import celery_app

        celery_app.app.conf.broker_url = self.url
        celery_app.app.conf.task_default_queue = self.queue
        self.app = celery_app.app
        self.task = celery_app.record
        self.spin = celery_app.spin
        self.workers = 0

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        self.task.apply_async(args=[path, tag, sent], queue=self.queue)

    def enqueue_at(self, path: str, tag: str, when: float) -> None:
        self.task.apply_async(args=[path, tag, when], queue=self.queue, eta=datetime.fromtimestamp(when, timezone.utc))

    def enqueue_spin(self, path: str, tag: str, sent: float, loops: int) -> None:
        self.spin.apply_async(args=[path, tag, sent, loops], queue=self.queue)

    def start_worker(self, processes: int = 0) -> Worker:
        """``-P solo`` by default, ``-P prefork -c N`` with *processes*."""
        self.workers += 1
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            *(["-P", "prefork", "-c", str(processes)] if processes else ["-P", "solo"]),
            "-Q",
            self.queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ]
        return Worker(
            argv,
            self.tmp / f"{self.key}-{self.workers}.log",
            env={"BENCH_CELERY_BROKER": self.url, "BENCH_CELERY_QUEUE": self.queue},
        )

    def close(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            log(f"could not delete the Celery queue: {exc}")
        # The next CeleryApp may use another broker URL: let Celery make new
        # pools (Kombu's global producer pools stay open for the same URL).
        self.app._pool = None
        self.app.amqp._producer_pool = None


class DramatiqApp(System):
    """Dramatiq with the same Redis: ``dramatiq --processes N --threads T``
    (T: Dramatiq's default, 8), its keys under a namespace of their own."""

    has_date = False
    threads = 8

    def __init__(self, broker: str, tmp: Path) -> None:
        if broker != "redis":
            raise ValueError("the bench runs Dramatiq on Redis only")
        from bench import dramatiq_app

        super().__init__(broker, tmp, "Dramatiq", "dramatiq")
        self.namespace = f"bench-dramatiq-{uuid.uuid4().hex[:8]}"
        self.broker_, self.record, self.spin = dramatiq_app.make(REDIS_URL, self.namespace)
        self.workers = 0

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        self.record.send(path, tag, sent)

    def enqueue_spin(self, path: str, tag: str, sent: float, loops: int) -> None:
        self.spin.send(path, tag, sent, loops)

    def start_worker(self, processes: int = 1) -> Worker:
        self.workers += 1
        argv = [sys.executable, "-m", "dramatiq", "bench.dramatiq_app:broker"]
        argv += ["--processes", str(processes), "--threads", str(self.threads), "--skip-logging"]
        return Worker(
            argv,
            self.tmp / f"{self.key}-{self.workers}.log",
            env={"BENCH_DRAMATIQ_URL": REDIS_URL, "BENCH_DRAMATIQ_NAMESPACE": self.namespace},
        )

    def close(self) -> None:
        delete_keys(f"{self.namespace}:*")
        self.broker_.close()


class HueyApp(System):
    """huey with the same Redis: ``huey_consumer -k process -w N``, one job
    at a time per process, JSON messages, no results."""

    has_date = False

    def __init__(self, broker: str, tmp: Path) -> None:
        if broker != "redis":
            raise ValueError("the bench runs huey on Redis only")
        from bench import huey_app

        super().__init__(broker, tmp, "huey", "huey")
        self.queue = f"bench_huey_{uuid.uuid4().hex[:8]}"
        self.huey, self.record, self.spin = huey_app.make(REDIS_URL, self.queue)
        self.workers = 0

    def enqueue(self, path: str, tag: str, sent: float) -> None:
        self.record(path, tag, sent)

    def enqueue_spin(self, path: str, tag: str, sent: float, loops: int) -> None:
        self.spin(path, tag, sent, loops)

    def start_worker(self, processes: int = 1) -> Worker:
        self.workers += 1
        consumer = Path(sys.executable).parent / "huey_consumer"
        argv = [str(consumer), "bench.huey_app.huey", "-k", "process", "-w", str(processes), "--quiet"]
        return Worker(
            argv,
            self.tmp / f"{self.key}-{self.workers}.log",
            env={"BENCH_HUEY_URL": REDIS_URL, "BENCH_HUEY_NAME": self.queue},
        )

    def close(self) -> None:
        delete_keys(f"huey.*.{self.queue}*")
        self.huey.storage.pool.disconnect()


def delete_keys(pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as exc:
        log(f"could not delete the bench keys {pattern}: {exc}")
    finally:
        client.close()


# -- the measurements -------------------------------------------------------------------


def timed(
    call: Callable[[str, str, float], None], path: str, tag: str, count: int, limit: float = float("inf")
) -> list[float]:
    """Call *call* *count* times (or until *limit* seconds have passed); the cost of each call."""
    costs = []
    perf = time.perf_counter
    end = perf() + limit
    for _ in range(count):
        if perf() > end:
            break
        sent = time.time()
        start = perf()
        call(path, tag, sent)
        costs.append(perf() - start)
    return costs
