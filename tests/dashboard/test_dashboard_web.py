"""The dashboard through WebTest: an application with its own security
policy and the dashboard included, running its jobs in-process (combined
mode) on SQLite files, so every record it shows is a real one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from policies import HeaderPolicy
from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy
from pyramid.exceptions import ConfigurationError

from conftest import make_settings
from daemons import wait_until
from pyramid_scheduler.demo import jobs
from pyramid_scheduler.wire.messages import JobRequest

ADMIN = {"X-User": "admin"}
HOSTILE = "<script>alert('x')</script>&amp;"


def make_app(settings: dict[str, str]) -> Any:
    with Configurator(settings=settings) as config:
        config.set_security_policy(HeaderPolicy())
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy())
        config.include("pyramid_scheduler.dashboard")
    return config.make_wsgi_app()


@pytest.fixture
def app(tmp_var: Path) -> Iterator[webtest.TestApp]:
    settings = make_settings(
        tmp_var, combined="true", allowed_modules="pyramid_scheduler.demo", secret="s" * 32, queues="jobs reports"
    )
    wsgi = make_app(settings)
    try:
        yield webtest.TestApp(wsgi)
    finally:
        wsgi.registry.scheduler.shutdown()


def scheduler(app: webtest.TestApp) -> Any:
    return app.app.registry.scheduler


def token(app: webtest.TestApp) -> str:
    page = app.get("/scheduler", headers=ADMIN)
    return str(page.html.body["data-csrf"])


def stored(app: webtest.TestApp, job_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        record = app.get(f"/scheduler/api/jobs/{job_id}", headers=ADMIN, status="*")
        return record.json if record.status_int == 200 and record.json["status"] == status else None

    return wait_until(reached, f"job {job_id} to be {status}", 20)


def later_job(app: webtest.TestApp, *args: Any, queue: str = "jobs", **options: Any) -> str:
    job_id = scheduler(app).add_date_job(jobs.say, time.time() + 3600, args=list(args), queue=queue, **options)
    stored(app, job_id, "scheduled")
    return job_id


def test_every_view_needs_the_permission(app: webtest.TestApp) -> None:
    for url in ("/scheduler", "/scheduler/", "/scheduler/jobs", "/scheduler/jobs/x", "/scheduler/dead-letters"):
        app.get(url, status=403)
        app.get(url, headers={"X-User": "guest"}, status=403)
        assert app.get(url, headers=ADMIN).content_type == "text/html"
    app.get("/scheduler/static/dashboard.js", status=403)
    assert "LiveTable" in app.get("/scheduler/static/dashboard.js", headers=ADMIN).text
    for url in ("jobs", "jobs/x", "jobs/x/runs", "daemons", "dead-letters", "stats"):
        answer = app.get(f"/scheduler/api/{url}", status=403)
        assert answer.content_type == "application/json"
        assert answer.json["status"] == 403
        assert "scheduler.dashboard.permission" in answer.json["error"]
    app.post("/scheduler/api/jobs/x/cancel", status=403)


def test_posts_need_the_csrf_token(app: webtest.TestApp) -> None:
    job_id = later_job(app, "stay")
    answer = app.post(f"/scheduler/api/jobs/{job_id}/pause", headers=ADMIN, status=400)
    assert "CSRF token" in answer.json["error"]
    app.post(f"/scheduler/api/jobs/{job_id}/pause", headers={**ADMIN, "X-CSRF-Token": "forged"}, status=400)
    assert stored(app, job_id, "scheduled")["status"] == "scheduled"
    # the token as a form field, as the job page's forms send it without script
    answer = app.post(f"/scheduler/api/jobs/{job_id}/pause", {"csrf_token": token(app)}, headers=ADMIN, status=202)
    assert answer.json == {"id": job_id, "queue": "jobs", "request": "pause", "status": "scheduled", "daemons": 1}
    stored(app, job_id, "paused")
    app.post(f"/scheduler/api/jobs/{job_id}/resume", headers={**ADMIN, "X-CSRF-Token": token(app)}, status=202)
    stored(app, job_id, "scheduled")


def test_job_api_shapes(app: webtest.TestApp) -> None:
    job_id = scheduler(app).add_async_job(jobs.say, args=["shape"])
    record = stored(app, job_id, "done")
    assert record["result"]["message"] == "shape"
    assert record["schedule"] == "now"
    assert record["next_fire_times"] == []
    assert [run["status"] for run in record["history"]] == ["done"]
    assert set(record["history"][0]) >= {"run_key", "scheduled_at", "started_at", "finished_at", "owner", "error"}
    assert set(record) >= set(scheduler(app).get_job(job_id))  # get_job's field names, all of them
    runs = app.get(f"/scheduler/api/jobs/{job_id}/runs", headers=ADMIN).json
    assert runs == {"runs": record["history"]}
    listed = app.get("/scheduler/api/jobs", {"status": "done"}, headers=ADMIN).json
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    assert listed["next_offset"] is None and listed["prev_offset"] is None
    daemons = app.get("/scheduler/api/daemons", headers=ADMIN).json["queues"]
    assert [(q["queue"], q["active"]) for q in daemons] == [("jobs", True), ("reports", True)]
    stats = app.get("/scheduler/api/stats", headers=ADMIN).json
    assert {"queue": "jobs", "status": "done", "count": 1} in stats["jobs"]
    assert len(stats["series"]) == 60
    assert sum(bucket["done"] for bucket in stats["series"]) == 1
    assert stats["series"][-1]["t"] <= stats["now"] < stats["series"][-1]["t"] + 60


def test_failed_job_shows_its_traceback_and_can_be_retried(app: webtest.TestApp) -> None:
    job_id = scheduler(app).add_async_job(jobs.fail, args=["boom"])
    record = stored(app, job_id, "failed")
    assert "RuntimeError: this job fails on purpose: boom" in record["error"]
    csrf = {**ADMIN, "X-CSRF-Token": token(app)}
    answer = app.post(f"/scheduler/api/jobs/{job_id}/cancel", headers=csrf, status=409)
    assert "cancel applies to" in answer.json["error"]
    app.post(f"/scheduler/api/jobs/{job_id}/retry", headers=csrf, status=202)
    first = record["history"][0]["run_key"]
    wait_until(
        lambda: [
            r
            for r in app.get(f"/scheduler/api/jobs/{job_id}/runs", headers=ADMIN).json["runs"]
            if r["run_key"] != first and r["status"] == "failed"
        ],
        "the retry's run (the retried job's record replaces the first one's runs)",
        20,
    )


def test_missing_things_are_404_and_bad_filters_400(app: webtest.TestApp) -> None:
    csrf = {**ADMIN, "X-CSRF-Token": token(app)}
    for url in ("/scheduler/api/jobs/nope", "/scheduler/api/jobs/nope/runs", "/scheduler/api/nothing-here"):
        answer = app.get(url, headers=ADMIN, status=404)
        assert answer.json["status"] == 404
    assert "'nope'" in app.post("/scheduler/api/jobs/nope/cancel", headers=csrf, status=404).json["error"]
    app.post("/scheduler/api/dead-letters/12345/delete", headers=csrf, status=404)
    for query, name in (
        ({"status": "sleeping"}, "status"),
        ({"queue": "elsewhere"}, "queue"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"func": "x" * 201}, "func"),
    ):
        answer = app.get("/scheduler/api/jobs", query, headers=ADMIN, status=400)
        assert answer.json["error"].startswith(f"{name}: "), answer.json
    app.get("/scheduler/api/dead-letters", {"queue": "elsewhere"}, headers=ADMIN, status=400)
    app.get("/scheduler/api/jobs/x/bogus", headers=ADMIN, status=404)


def test_pagination_filters_and_search(app: webtest.TestApp) -> None:
    made = [later_job(app, f"n{i}") for i in range(5)]
    other = later_job(app, "elsewhere", queue="reports")
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = app.get("/scheduler/api/jobs", {"queue": "jobs", "limit": 2, "offset": offset}, headers=ADMIN).json
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        offset = page["next_offset"]
    assert sorted(seen) == sorted(made) and len(seen) == 5
    assert page["prev_offset"] == 2
    found = app.get("/scheduler/api/jobs", {"search": other}, headers=ADMIN).json["jobs"]
    assert [job["id"] for job in found] == [other]
    assert app.get("/scheduler/api/jobs", {"search": other, "queue": "jobs"}, headers=ADMIN).json["jobs"] == []
    assert app.get("/scheduler/api/jobs", {"func": "jobs:say"}, headers=ADMIN).json["jobs"]
    assert app.get("/scheduler/api/jobs", {"func": "jobs:fail"}, headers=ADMIN).json["jobs"] == []


def test_a_job_id_with_slashes(app: webtest.TestApp) -> None:
    job_id = later_job(app, "x", id="reports/daily")
    assert app.get("/scheduler/api/jobs/reports/daily", headers=ADMIN).json["id"] == job_id
    assert app.get("/scheduler/api/jobs/reports%2Fdaily/runs", headers=ADMIN).json == {"runs": []}
    assert app.get("/scheduler/jobs/reports/daily", headers=ADMIN).html.body["data-job"] == job_id
    app.post("/scheduler/api/jobs/reports/daily/pause", headers={**ADMIN, "X-CSRF-Token": token(app)}, status=202)
    stored(app, job_id, "paused")


def test_hostile_text_is_never_markup(app: webtest.TestApp) -> None:
    job_id = later_job(app, HOSTILE)
    record = app.get(f"/scheduler/api/jobs/{job_id}", headers=ADMIN)
    assert record.content_type == "application/json"
    assert record.json["args"] == [HOSTILE]
    hostile_id = "<img src=x onerror=alert(1)>\"'"
    page = app.get(f"/scheduler/jobs/{hostile_id}", headers=ADMIN)
    assert "<img" not in page.text
    assert page.html.body["data-job"] == hostile_id
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    script = app.get("/scheduler/static/dashboard.js", headers=ADMIN).text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_dead_letters_are_listed_and_deleted(app: webtest.TestApp) -> None:
    ledger = scheduler(app)._ledger()
    ledger.dead_letter_many(
        [("jobs", "bad signature", b'{"op": "add"}', None, None), ("reports", HOSTILE, b"junk", None, None)]
    )
    letters = app.get("/scheduler/api/dead-letters", headers=ADMIN).json["dead_letters"]
    assert [(d["queue"], d["reason"], d["whole"]) for d in letters] == [
        ("jobs", "bad signature", True),
        ("reports", HOSTILE, True),
    ]
    csrf = {**ADMIN, "X-CSRF-Token": token(app)}
    answer = app.post(f"/scheduler/api/dead-letters/{letters[0]['id']}/delete", headers=csrf)
    assert answer.json == {"id": letters[0]["id"], "deleted": True}
    left = app.get("/scheduler/api/dead-letters", {"queue": "reports"}, headers=ADMIN).json["dead_letters"]
    assert [d["id"] for d in left] == [letters[1]["id"]]


def test_the_path_and_permission_are_settings(tmp_var: Path) -> None:
    settings = make_settings(tmp_var, **{"dashboard.path": "/ops/jobs", "dashboard.permission": "ops"})
    with Configurator(settings=settings) as config:
        config.set_security_policy(HeaderPolicy())
        config.include("pyramid_scheduler.dashboard")
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/scheduler", status=404)
    app.get("/ops/jobs", headers=ADMIN, status=403)  # the admin lacks "ops"
    assert app.get("/ops/jobs/api/jobs", headers=ADMIN, status=403).json["status"] == 403
    config.registry.scheduler.close()


def test_bad_settings_are_refused_at_the_include(tmp_var: Path) -> None:
    with pytest.raises(ConfigurationError, match="scheduler.dashboard.path"):
        with Configurator(settings=make_settings(tmp_var, **{"dashboard.path": "scheduler/"})) as config:
            config.include("pyramid_scheduler.dashboard")
    with pytest.raises(ConfigurationError, match="reads the job store"):
        with Configurator(settings=make_settings(tmp_var, **{"jobstore.url": "memory"})) as config:
            config.include("pyramid_scheduler.dashboard")
        config.commit()


def test_a_dead_letter_is_replayed_from_the_api(app: webtest.TestApp) -> None:
    def letter(job_id: str, signed: bool | None, whole: bool = True) -> int:
        body = JobRequest(
            op="add",
            id=job_id,
            queue="jobs",
            func="pyramid_scheduler.demo.jobs:say",
            args=[job_id],
            kwargs={},
            trigger={"type": "now", "run_date": "2026-01-01T00:00:00+00:00"},
        ).encode()
        ledger = scheduler(app)._ledger()
        ledger.dead_letter_many([("jobs", "sent too long ago", body, body.decode() if whole else None, signed)])
        return int(ledger.list_dead_letters(1)[-1]["id"])

    csrf = {**ADMIN, "X-CSRF-Token": token(app)}
    signed = letter("replayed", True)
    answer = app.post(f"/scheduler/api/dead-letters/{signed}/replay", headers=csrf, status=202)
    assert answer.json == {"id": signed, "replayed": True, "job_id": "replayed"}
    assert stored(app, "replayed", "done")["result"]["message"] == "replayed"
    unsigned = letter("unsigned", False)
    listed = app.get("/scheduler/api/dead-letters", headers=ADMIN).json["dead_letters"]
    assert [(d["id"], d["replayable"], d["signed"]) for d in listed] == [(unsigned, True, False)]
    refused = app.post(f"/scheduler/api/dead-letters/{unsigned}/replay", headers=csrf, status=409)
    assert "did not carry a valid signature" in refused.json["error"]
    app.post(f"/scheduler/api/dead-letters/{unsigned}/replay?force=1", headers=csrf, status=202)
    stored(app, "unsigned", "done")
    cut = letter("cut", True, whole=False)
    assert (
        "cannot be replayed"
        in app.post(f"/scheduler/api/dead-letters/{cut}/replay", headers=csrf, status=409).json["error"]
    )
    app.post("/scheduler/api/dead-letters/999999/replay", headers=csrf, status=404)
    app.post(f"/scheduler/api/dead-letters/{cut}/replay", headers=ADMIN, status=400)  # no CSRF token


def test_a_job_held_by_its_rate_limit_shows_waiting_and_why(app: webtest.TestApp) -> None:
    """A run past its rate_limit (one a minute) waits: the API shows the
    status and the reason, the list filters on it, and it can be canceled."""
    proxy = scheduler(app)
    first = proxy.add_async_job(jobs.say, args=["first"], queue="jobs", rate_limit="1/m", rate_key="dash")
    stored(app, first, "done")  # (sent together, either could have taken the first start)
    held = proxy.add_async_job(jobs.say, args=["second"], queue="jobs", rate_limit="1/m", rate_key="dash")
    record = stored(app, held, "waiting")
    assert record["waiting_reason"].startswith("rate limit: 1/m for key 'dash'; start reserved at ")
    listed = app.get("/scheduler/api/jobs", {"status": "waiting"}, headers=ADMIN).json
    assert [row["id"] for row in listed["jobs"]] == [held]
    csrf = token(app)
    app.post(f"/scheduler/api/jobs/{held}/cancel", headers={**ADMIN, "X-CSRF-Token": csrf}, status=202)
    stored(app, held, "canceled")
