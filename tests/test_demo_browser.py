"""The demo page in a real headless Chromium, against real ``pserve`` and
``pscheduler`` processes on the embedded SQLite default (development.ini)."""

from __future__ import annotations

import os
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


def test_schedule_jobs_from_the_page_and_see_them_run(demo_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(demo_url)
            expect(page.locator("#daemon")).to_contain_text("Daemon running", timeout=20_000)

            page.fill("input[name=message]", "hello from the browser")
            page.click("button[type=submit]")
            expect(page.locator("#notice")).to_contain_text("sent.")
            row = page.locator("#jobs tbody tr").first
            # the page refreshes its table by itself: no reload here
            expect(row).to_have_attribute("data-status", "done", timeout=20_000)
            expect(row).to_contain_text("hello from the browser")

            page.check("input[name=when][value=every]")
            page.fill("input[name=seconds]", "0.5")
            page.fill("input[name=message]", "tick")
            page.click("#add-job button[type=submit]")
            ticking = page.locator("#jobs tbody tr", has_text="every 0.5 s")
            expect(ticking.locator("td").nth(5)).not_to_have_text("0", timeout=20_000)
            ticking.get_by_role("button", name="Cancel").click()
            expect(page.locator("#jobs tbody tr", has_text="every 0.5 s")).to_have_attribute(
                "data-status", "canceled", timeout=20_000
            )

            page.check("input[name=when][value=cron]")
            page.fill("input[name=crontab]", "61 * * * *")
            page.click("#add-job button[type=submit]")
            expect(page.locator("#error")).to_contain_text("higher than the maximum value (59)")
        finally:
            browser.close()
