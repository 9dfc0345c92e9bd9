"""The demo application through WebTest, with its jobs run in-process
(combined mode) on SQLite files, as a newcomer would use it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest

from conftest import make_settings
from daemons import wait_until
from pyramid_scheduler.demo import main


@pytest.fixture
def app(tmp_var: Path) -> Iterator[webtest.TestApp]:
    settings = make_settings(
        tmp_var,
        **{"combined": "true", "allowed_modules": "pyramid_scheduler.demo", "secret": "s" * 32, "lease.ttl": "3"},
    )
    settings["demo.title"] = "demo under test"
    wsgi = main({}, **settings)
    test_app = webtest.TestApp(wsgi)
    try:
        log_in(test_app)
        yield test_app
    finally:
        wsgi.registry.scheduler.shutdown()


def log_in(app: webtest.TestApp, password: str = "demo", status: int = 303) -> webtest.TestResponse:
    form = app.get("/", status=303).follow().forms["login"]
    form["login"] = "demo"
    form["password"] = password
    return form.submit(status=status)


def schedule(app: webtest.TestApp, status: int = 303, **fields: str) -> webtest.TestResponse:
    form = app.get("/").forms["add-job"]
    for name, value in fields.items():
        form[name] = value
    return form.submit(status=status)


def record(app: webtest.TestApp, job_id: str) -> dict[str, Any] | None:
    """The job as the dashboard's JSON API gives it."""
    answer = app.get(f"/scheduler/api/jobs/{job_id}", status=(200, 404))
    return answer.json if answer.status_int == 200 else None


def csrf(app: webtest.TestApp) -> dict[str, str]:
    return {"X-CSRF-Token": str(app.get("/scheduler").html.body["data-csrf"])}


def wait_for(
    app: webtest.TestApp, job_id: str, statuses: set[str], min_runs: int = 0, timeout: float = 20
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = record(app, job_id)
        return job if job is not None and job["status"] in statuses and job["runs"] >= min_runs else None

    return wait_until(reached, f"job {job_id} to reach {statuses} with {min_runs}+ runs", timeout)


def added_id(response: webtest.TestResponse) -> str:
    match = re.search(r"added=([0-9a-f]+)", response.headers["Location"])
    assert match, response.headers["Location"]
    return match.group(1)


def test_everything_needs_the_demo_login(tmp_var: Path) -> None:
    settings = make_settings(tmp_var, **{"allowed_modules": "pyramid_scheduler.demo", "secret": "s" * 32})
    app = webtest.TestApp(main({}, **settings))
    for url in ("/", "/scheduler", "/scheduler/jobs"):
        assert "/login?next=" in app.get(url, status=303).headers["Location"]
    assert app.get("/scheduler/api/jobs", status=403).json["status"] == 403
    assert [d["queue"] for d in app.get("/daemons.json").json["daemons"]] == ["jobs"]  # public: no job data
    assert app.post("/jobs", {"action": "say", "when": "now"}, status=303).headers["Location"].endswith("next=%2F")
    page = log_in(app, password="wrong", status=400)
    assert "Wrong user or password" in page.html.find(id="error").text
    assert log_in(app).headers["Location"].endswith("/")
    assert app.get("/scheduler/api/jobs").json["jobs"] == []
    app.post("/logout", {"csrf_token": csrf(app)["X-CSRF-Token"]}, status=303)
    app.get("/scheduler", status=303)
    app.app.registry.scheduler.close()


def test_run_now_job_runs_and_shows_its_result(app: webtest.TestApp) -> None:
    job_id = added_id(schedule(app, message="hello there"))
    job = wait_for(app, job_id, {"done"})
    assert job["result"]["message"] == "hello there"
    assert job["result"]["app"] == "demo under test"  # the registry was current in the job
    page = app.get(f"/?added={job_id}")
    assert f"Job {job_id} sent." in page.html.find(id="notice").text
    assert page.html.find(id="notice").a["href"] == f"/scheduler/jobs/{job_id}"
    assert app.get(f"/scheduler/jobs/{job_id}").html.body["data-job"] == job_id


def test_failing_job_shows_its_error(app: webtest.TestApp) -> None:
    job_id = added_id(schedule(app, action="fail", message="boom"))
    job = wait_for(app, job_id, {"failed"})
    assert "this job fails on purpose: boom" in job["error"]
    assert "RuntimeError" in job["error"]


def test_interval_job_runs_repeatedly_until_canceled(app: webtest.TestApp) -> None:
    job_id = added_id(schedule(app, when="every", seconds="0.3", message="tick"))
    wait_for(app, job_id, {"scheduled", "running"}, min_runs=2)
    app.post(f"/scheduler/api/jobs/{job_id}/cancel", headers=csrf(app), status=202)
    job = wait_for(app, job_id, {"canceled"})
    runs = job["runs"]
    time.sleep(1)  # several intervals: a canceled job must not run again
    assert record(app, job_id)["runs"] == runs  # type: ignore[index]


def test_bad_input_is_shown_on_the_page_not_a_500(app: webtest.TestApp) -> None:
    page = schedule(app, status=400, when="cron", crontab="99 * * * *")
    assert "higher than the maximum value (59)" in page.html.find(id="error").text
    page = schedule(app, status=400, when="in", seconds="soon")
    assert "seconds: expected a number of seconds, got 'soon'" in page.html.find(id="error").text
    assert app.get("/scheduler/api/jobs").json["jobs"] == []


def test_forms_need_the_csrf_token(app: webtest.TestApp) -> None:
    app.post("/jobs", {"action": "say", "when": "now"}, status=400)
    assert app.get("/scheduler/api/jobs").json["jobs"] == []


def test_daemon_status_is_shown(app: webtest.TestApp) -> None:
    wait_until(
        lambda: all(d["active"] for d in app.get("/scheduler/api/daemons").json["queues"]),
        "the in-process scheduler's lease",
        20,
    )
    assert "Daemon running" in app.get("/").html.find(id="daemon").text
