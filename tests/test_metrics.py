"""Health and metrics: ``config.include("pyramid_scheduler.metrics")`` under
WebTest and ``scheduler.metrics.listen`` in real ``pscheduler`` daemons.

The scrapes are parsed with ``prometheus_client``'s own parser; the counts are
exact after known work (the jobs' ends are read from the job store first).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from policies import HeaderPolicy
from prometheus_client.parser import text_string_to_metric_families
from pyramid.config import Configurator
from webtest import TestApp

from conftest import make_settings
from daemons import Daemon, free_port, wait_until, write_ini
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: ``(name, sorted labels) -> value``."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
    except OSError as exc:  # not listening (yet)
        return 0, str(exc)


def web_app(settings: dict[str, str], policy: Any = None) -> tuple[TestApp, Any]:
    with Configurator(settings=settings) as config:
        if policy is not None:
            config.set_security_policy(policy)
        config.include("pyramid_scheduler")
        config.include("pyramid_scheduler.metrics")
    return TestApp(config.make_wsgi_app()), config.registry.scheduler


def settled(scheduler: Any, ids: list[str]) -> bool:
    return all((scheduler.get_job(job_id) or {}).get("status") in ("done", "failed") for job_id in ids)


@pytest.fixture
def daemon_settings(tmp_var: Path) -> dict[str, str]:
    return make_settings(tmp_var, **{"metrics.permission": "public"})


def test_counts_after_known_work_then_health_follows_the_daemon(tmp_var: Path, daemon_settings: dict[str, str]):
    port = free_port()
    oracle = str(tmp_var / "oracle.sqlite")
    ini = write_ini(tmp_var / "app.ini", {**daemon_settings, "scheduler.metrics.listen": f"127.0.0.1:{port}"})
    app, scheduler = web_app(daemon_settings)
    before = samples(app.get("/scheduler/metrics").text)
    daemon = Daemon.start(ini)
    try:
        daemon.wait_consuming()
        ids = [scheduler.add_async_job(jobs.noop, args=[n]) for n in range(5)]
        ids += [scheduler.add_async_job(jobs.fail, args=[oracle, f"f{n}"]) for n in range(2)]
        ids.append(scheduler.add_async_job(jobs.noop, args=[5], durable=False))  # the fast lane
        wait_until(lambda: settled(scheduler, ids), "the 8 jobs to end", alive=(daemon,))

        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        own = samples(text)
        # The job store records a run's end before its event reaches the counters.
        own = wait_until(
            lambda: (
                (s := samples(http_get(f"http://127.0.0.1:{port}/metrics")[1]))
                and value(s, "pyramid_scheduler_runs_total", queue="jobs", outcome="failure") == 2
                and s
            ),
            "the daemon's counters",
        )
        assert value(own, "pyramid_scheduler_runs_total", queue="jobs", outcome="success") == 6
        assert value(own, "pyramid_scheduler_runs_total", queue="jobs", outcome="failure") == 2
        assert value(own, "pyramid_scheduler_runs_total", queue="jobs", outcome="missed") == 0
        assert value(own, "pyramid_scheduler_run_duration_seconds_count", queue="jobs") == 8
        assert value(own, "pyramid_scheduler_run_lateness_seconds_count", queue="jobs") == 8
        assert value(own, "pyramid_scheduler_run_duration_seconds_bucket", queue="jobs", le="+Inf") == 8
        # The daemon serves its own series, not the web side's.
        assert value(own, "pyramid_scheduler_jobs_enqueued_total", queue="jobs", kind="async") == 0
        status, body = http_get(f"http://127.0.0.1:{port}/health")
        assert status == 200 and json.loads(body)["status"] == "ok"

        # The job store's gauges are cached a second or two (probes.CACHE_SECONDS).
        web = wait_until(
            lambda: (
                (s := samples(app.get("/scheduler/metrics").text))
                and value(s, "pyramid_scheduler_jobs", queue="jobs", status="done") == 6
                and s
            ),
            "the web side's gauges",
        )
        enqueued = value(web, "pyramid_scheduler_jobs_enqueued_total", queue="jobs", kind="async")
        assert enqueued - value(before, "pyramid_scheduler_jobs_enqueued_total", queue="jobs", kind="async") == 8
        assert value(web, "pyramid_scheduler_jobs", queue="jobs", status="done") == 6
        assert value(web, "pyramid_scheduler_jobs", queue="jobs", status="failed") == 2
        assert value(web, "pyramid_scheduler_daemons", queue="jobs") == 1
        assert value(web, "pyramid_scheduler_queue_depth", queue="jobs") == 0
        assert value(web, "pyramid_scheduler_dead_letters") == 0

        health = app.get("/scheduler/health").json
        assert health["status"] == "ok"
        assert health["broker"] == {"reachable": True} and health["jobstore"] == {"reachable": True}
        assert health["queues"][0]["queue"] == "jobs" and health["queues"][0]["daemons"] == 1
        assert health["queues"][0]["last_heartbeat"] > 0
    finally:
        assert daemon.terminate() == 0
        daemon.close()
    # A clean stop leaves at once: no queue is served now.
    health = wait_until(lambda: (r := app.get("/scheduler/health", status="*")).status_int == 503 and r, "a 503")
    assert health.json["status"] == "unavailable"
    assert health.json["reasons"] == ["queue 'jobs': no live daemon"]
    assert health.json["queues"][0]["daemons"] == 0
    scheduler.close()


def test_health_is_503_when_the_job_store_does_not_answer(tmp_var: Path):
    # Nothing listens on port 1: the job store refuses every connection.
    settings = make_settings(tmp_var)
    settings["scheduler.jobstore.url"] = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    app, scheduler = web_app(settings)
    response = app.get("/scheduler/health", status=503)
    assert response.json["status"] == "unavailable"
    assert response.json["jobstore"] == {"reachable": False}
    assert response.json["broker"] == {"reachable": True}
    # The reason names the failure, not the driver's text (hosts, users): the probe may be public.
    assert response.json["reasons"][0] == "job store: unavailable (OperationalError)"
    # The store's gauges are left out of that scrape; the broker's are there.
    scrape = samples(app.get("/scheduler/metrics", headers={"X-User": "admin"}, status="*").text)
    assert ("pyramid_scheduler_daemons", (("queue", "jobs"),)) not in scrape
    assert ("pyramid_scheduler_queue_depth", (("queue", "jobs"),)) in scrape
    scheduler.close()


def test_health_answers_in_bounded_time_when_the_job_store_hangs(tmp_var: Path):
    # A listener that never answers: a connection to it waits for ever
    # (no connect_timeout in the URL); the probe stops waiting after 2 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings = make_settings(tmp_var)
        settings["scheduler.jobstore.url"] = f"postgresql+psycopg://nobody@127.0.0.1:{silent.getsockname()[1]}/none"
        app, scheduler = web_app(settings)
        response = app.get("/scheduler/health", status=503)
        assert response.json["reasons"] == ["job store: no answer within 2s"]
        assert response.json["broker"] == {"reachable": True}
    scheduler.close()


#: ``admin`` has the dashboard's permission, ``ops`` one of its own.
GRANTS = {"admin": {"scheduler.admin"}, "ops": {"metrics.read"}}


def test_metrics_take_the_dashboard_permission_and_health_is_public(tmp_var: Path):
    app, scheduler = web_app(make_settings(tmp_var), HeaderPolicy(GRANTS))
    app.get("/scheduler/metrics", status=403)
    app.get("/scheduler/metrics", headers={"X-User": "ops"}, status=403)
    assert "pyramid_scheduler_jobs" in app.get("/scheduler/metrics", headers={"X-User": "admin"}, status=200).text
    assert app.get("/scheduler/health", status=503).json["reasons"] == ["queue 'jobs': no live daemon"]
    scheduler.close()


def test_permissions_of_their_own_under_another_path(tmp_var: Path):
    settings = make_settings(
        tmp_var,
        **{"dashboard.path": "/ops/sched", "metrics.permission": "metrics.read", "health.permission": "metrics.read"},
    )
    app, scheduler = web_app(settings, HeaderPolicy(GRANTS))
    app.get("/scheduler/metrics", headers={"X-User": "ops"}, status=404)
    app.get("/ops/sched/metrics", headers={"X-User": "admin"}, status=403)
    app.get("/ops/sched/metrics", headers={"X-User": "ops"}, status=200)
    app.get("/ops/sched/health", status=403)
    app.get("/ops/sched/health", headers={"X-User": "ops"}, status=503)
    scheduler.close()


def test_public_metrics(tmp_var: Path):
    app, scheduler = web_app(make_settings(tmp_var, **{"metrics.permission": "public"}), HeaderPolicy(GRANTS))
    assert app.get("/scheduler/metrics", status=200).content_type == "text/plain"
    scheduler.close()


def test_each_process_serves_its_own_counters(tmp_var: Path, daemon_settings: dict[str, str]):
    port = free_port()
    while True:  # two free ports in a row
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port + 1)) != 0:
                break
        port = free_port()
    ini = write_ini(tmp_var / "app.ini", {**daemon_settings, "scheduler.metrics.listen": f"127.0.0.1:{port}"})
    _, scheduler = web_app(daemon_settings)
    daemon = Daemon.start(ini, "--processes", "2")
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        owners = [
            wait_until(lambda url=url: http_get(url + "/health")[0] == 200, f"{url}/health", alive=(daemon,))
            and json.loads(http_get(url + "/health")[1])["daemon"]
            for url in urls
        ]
        assert owners[0] != owners[1]  # two daemons, each on its port
        ids = [scheduler.add_async_job(jobs.noop, args=[n]) for n in range(20)]
        wait_until(lambda: settled(scheduler, ids), "the 20 jobs to end", alive=(daemon,))

        def counted() -> list[float]:
            scrapes = [samples(http_get(url + "/metrics")[1]) for url in urls]
            return [value(s, "pyramid_scheduler_runs_total", queue="jobs", outcome="success") for s in scrapes]

        each = wait_until(lambda: (c := counted()) and sum(c) == 20 and c, "20 runs counted")
        # Each daemon counts the runs it made (the ledger says which daemon ran each).
        ledger = scheduler._ledger()
        by_owner: dict[str, int] = {}
        for run in ledger.recent_runs(100):
            by_owner[run["owner"]] = by_owner.get(run["owner"], 0) + 1
        assert each == [by_owner.get(owners[0], 0), by_owner.get(owners[1], 0)]
    finally:
        code = daemon.terminate()
        log = daemon.log()
        daemon.close()
    assert code == 0, log
    scheduler.close()


def test_a_port_in_use_is_refused_naming_the_setting(tmp_var: Path, daemon_settings: dict[str, str]):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ini = write_ini(tmp_var / "app.ini", {**daemon_settings, "scheduler.metrics.listen": f"127.0.0.1:{port}"})
        daemon = Daemon.start(ini)
        try:
            assert daemon.wait() == 20  # EXIT_STARTUP_FAILED
            assert f"scheduler.metrics.listen: cannot serve the metrics of process 1/1 on 127.0.0.1:{port}" in (
                daemon.log()
            )
        finally:
            daemon.close()


@pytest.mark.parametrize("package", ["pyramid_scheduler.metrics", "pyramid_scheduler.dashboard"])
def test_the_include_without_prometheus_client_says_what_to_install(tmp_var: Path, package: str):
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from pyramid.config import Configurator\n"
        "config = Configurator(settings={})\n"
        f"config.include({package!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'pip install "pyramid_scheduler[metrics]" (or [dashboard])' in result.stderr


def test_the_include_alone_includes_the_scheduler(tmp_var: Path):
    with Configurator(settings=make_settings(tmp_var, **{"metrics.permission": "public"})) as config:
        config.include("pyramid_scheduler.metrics")
    app = TestApp(config.make_wsgi_app())
    config.registry.scheduler.add_async_job(jobs.noop, args=[1])
    scrape = samples(app.get("/scheduler/metrics").text)
    assert value(scrape, "pyramid_scheduler_queue_depth", queue="jobs") == 1  # waiting: no daemon runs
    config.registry.scheduler.close()
