"""The demo and its dashboard in a real headless Chromium, against real ``pserve`` and
``pscheduler`` processes on the embedded SQLite default (development.ini)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IN_CI
from daemons import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def need_browser() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


@pytest.fixture
def demo_url(tmp_path: Path) -> Iterator[str]:
    """development.ini, with its SQLite files in tmp_path and a free port."""
    need_browser()
    port = free_port()
    ini = (ROOT / "development.ini").read_text()
    ini = ini.replace("%(here)s/var/", f"{tmp_path}/").replace("127.0.0.1:6543", f"127.0.0.1:{port}")
    config = tmp_path / "demo.ini"
    config.write_text(ini)
    log = (tmp_path / "demo.log").open("w")
    procs = [
        subprocess.Popen([str(BIN / name), str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        for name in ("pscheduler", "pserve")
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert all(p.poll() is None for p in procs), (tmp_path / "demo.log").read_text()
                assert time.monotonic() < deadline, "pserve did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=40) for proc in procs]
        log.close()
        print((tmp_path / "demo.log").read_text())
    assert codes[0] == 0, "pscheduler exits 0 on SIGTERM"


def dead_letter(database: Path, job_id: str) -> None:
    """A refused message in the demo's job store, written as the daemon writes one."""
    import sqlalchemy as sa

    from pyramid_scheduler.store.ledger import Ledger
    from pyramid_scheduler.wire.messages import JobRequest

    body = JobRequest(
        op="add",
        id=job_id,
        queue="default",
        func="pyramid_scheduler.demo.jobs:say",
        args=["replayed"],
        kwargs={},
        trigger={"type": "now", "run_date": "2026-01-01T00:00:00+00:00"},
    ).encode()
    engine = sa.create_engine(f"sqlite:///{database}")
    Ledger(engine).dead_letter_many([("default", "<b>refused</b>: sent too long ago", body, body.decode(), True)])
    engine.dispose()


def shots_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: $DASHBOARD_SCREENSHOTS (the docs' images are
    made with docs/_static), else the test's own directory."""
    where = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_log_in_schedule_and_watch_jobs_in_the_dashboard(demo_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = shots_dir(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"dashboard-{name}.png"), full_page=True)

            page.goto(demo_url)
            expect(page.locator("#login")).to_be_visible()  # the demo's pages need its login
            shot("login")
            page.fill("input[name=login]", "demo")
            page.fill("input[name=password]", "demo")
            page.click("#login button[type=submit]")
            expect(page.locator("#daemon")).to_contain_text("Daemon running", timeout=20_000)

            page.fill("input[name=message]", "hello from the browser")
            page.click("#add-job button[type=submit]")
            expect(page.locator("#notice")).to_contain_text("sent.")
            shot("schedule")
            page.click("#notice a")  # the job's page in the dashboard
            expect(page.locator("body")).to_have_attribute("data-status", "done", timeout=20_000)
            expect(page.locator("#result")).to_contain_text("hello from the browser")
            expect(page.locator("#runs tbody tr")).to_have_count(1)
            expect(page.locator("#runs tbody tr").first).to_have_attribute("data-status", "done")
            shot("job")

            page.goto(demo_url)
            page.select_option("select[name=action]", "fail")
            page.fill("input[name=message]", "<b>not bold</b>")
            page.click("#add-job button[type=submit]")
            page.click("#notice a")
            expect(page.locator("body")).to_have_attribute("data-status", "failed", timeout=20_000)
            expect(page.locator("#error")).to_contain_text("RuntimeError: this job fails on purpose: <b>not bold</b>")
            expect(page.locator("#request b")).to_have_count(0)  # hostile text stays text
            shot("job-failed")

            page.goto(demo_url)
            page.check("input[name=when][value=every]")
            page.fill("input[name=seconds]", "0.5")
            page.fill("input[name=message]", "tick")
            page.click("#add-job button[type=submit]")
            ticking = page.locator("#notice a").inner_text()
            token = page.locator("#add-job input[name=csrf_token]").get_attribute("value") or ""

            page.goto(demo_url + "scheduler/jobs")
            row = page.locator(f'#jobs tbody tr[data-key="{ticking}"]')
            runs = row.locator("td").nth(7)
            expect(runs).not_to_have_text("0", timeout=20_000)
            rows_before = page.locator("#jobs tbody tr").count()
            row.hover()
            box = row.bounding_box()
            seen = runs.inner_text()
            # a new job arrives while the pointer is over the table
            page.request.post(demo_url + "jobs", form={"csrf_token": token, "action": "say", "when": "now"})
            expect(runs).not_to_have_text(seen, timeout=10_000)  # an update arrived, in place
            expect(page.locator(".new-rows")).to_have_text("1 new \u2014 show", timeout=10_000)
            assert row.bounding_box() == box, "a row moved under the pointer"
            assert page.locator("#jobs tbody tr").count() == rows_before
            page.mouse.move(5, 5)  # off the table: the new row comes in
            expect(page.locator("#jobs tbody tr")).to_have_count(rows_before + 1)
            expect(page.locator("time").first).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\dT"))
            shot("jobs")

            row.locator("a").click()
            expect(page.locator("#fire-times li").first).to_contain_text("T")
            page.click("form[data-action=cancel] button")
            expect(page.locator("#message")).to_contain_text("Cancel sent to queue default")
            expect(page.locator("body")).to_have_attribute("data-status", "canceled", timeout=20_000)
            expect(page.locator("form[data-action=cancel] button")).to_be_disabled()

            page.goto(demo_url + "scheduler")
            expect(page.locator('#queues tbody tr[data-key="default"] td').nth(1)).to_have_text("1", timeout=10_000)
            expect(page.locator("#chart rect.bar.done").first).to_be_attached(timeout=10_000)
            expect(page.locator('#counts tbody tr[data-key="default"]')).to_contain_text("1")
            shot("overview")
            page.goto(demo_url + "scheduler/dead-letters")
            expect(page.locator(".empty")).to_be_visible()
            dead_letter(tmp_path / "scheduler-jobs.sqlite", "from-a-dead-letter")
            letter = page.locator("#dead-letters tbody tr").first
            expect(letter).to_contain_text("<b>refused</b>", timeout=10_000)  # as text
            shot("dead-letters")
            letter.get_by_role("button", name="Replay").click()
            expect(page.locator("#message")).to_contain_text("replayed as job from-a-dead-letter")
            page.mouse.move(5, 5)
            expect(page.locator("#dead-letters tbody tr")).to_have_count(0, timeout=10_000)
            page.goto(demo_url + "scheduler/jobs/from-a-dead-letter")
            expect(page.locator("body")).to_have_attribute("data-status", "done", timeout=20_000)

            page.set_viewport_size({"width": 390, "height": 844})  # a phone
            page.goto(demo_url + "scheduler/jobs")
            expect(page.locator("#jobs tbody tr").first).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
            shot("phone")

            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(demo_url)
            page.check("input[name=when][value=cron]")
            page.fill("input[name=crontab]", "61 * * * *")
            page.click("#add-job button[type=submit]")
            expect(page.locator("#error")).to_contain_text("higher than the maximum value (59)")
        finally:
            browser.close()
