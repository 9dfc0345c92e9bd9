"""Config-time schedules applied by real ``pscheduler`` daemons at start: a
new declaration is stored, a changed one updates the stored job and a removed
one is removed (JOB_REMOVED). An unchanged one is left alone: see
tests/web/test_declare.py, with in-process engines."""

from __future__ import annotations

import pytest

from daemons import write_ini
from integration.conftest import wait_until
from integration.sampleapp.scheduled import main
from pyramid_scheduler.api import Event

pytestmark = [pytest.mark.integration]


def test_declarations_are_reconciled_at_daemon_start(make_harness, tmp_path):
    harness = make_harness()
    proxy = harness.proxy()
    starts = []

    def start(variant):
        starts.append(variant)
        ini = write_ini(
            tmp_path / f"declared-{len(starts)}.ini",
            {**harness.settings, "sampleapp.declarations": variant},
            app="call:integration.sampleapp.scheduled:main",
        )
        return harness.start(ini=ini).wait_consuming()

    first = start("v1")
    harness.wait_runs("tick-v1", alive=(first,))
    assert proxy.get_job("nightly")["status"] == "scheduled"
    assert first.terminate() == 0

    # The code changed: tick records another tag, nightly is gone.
    second = start("v2")
    harness.wait_runs("tick-v2", alive=(second,))
    assert proxy.get_job("tick")["args"] == [harness.oracle, "tick-v2"]
    removed = harness.wait_job(proxy, "nightly", {"canceled"}, alive=(second,))
    assert "declaration is gone" in removed["error"]
    wait_until(
        lambda: [e for e in harness.events("nightly") if e["type"] == Event.JOB_REMOVED],
        "JOB_REMOVED for nightly",
        alive=(second,),
    )
    assert "job tick (queue jobs): declaration changed" in second.log()
    assert second.terminate() == 0
    created = [e for e in harness.events("tick") if e["type"] == Event.JOB_CREATED]
    assert len(created) == 1, harness.events("tick")


def test_combined_mode_applies_declarations_in_process(harness):
    wsgi = main({}, **harness.app_settings(**{"scheduler.combined": "true", "sampleapp.declarations": "v2"}))
    try:
        harness.wait_runs("tick-v2", 2)
        record = wsgi.registry.scheduler.get_job("tick")
        assert record["status"] in ("scheduled", "running") and record["runs"] >= 1
    finally:
        wsgi.registry.scheduler.shutdown()
