"""Transaction-aware enqueue and request-taking jobs, end to end: a WebTest app
with pyramid_tm and a zope.sqlalchemy session, and a real ``pscheduler``
running the same application (SQLite broker and job store; Redis and
PostgreSQL too for the commit/abort test)."""

from __future__ import annotations

import pytest
import webtest

from daemons import write_ini
from integration.sampleapp.tm import main, order_tags

pytestmark = [pytest.mark.integration]


@pytest.fixture
def tm_harness(make_harness, tmp_path, request):
    broker, store = getattr(request, "param", ("sqlite", "sqlite"))
    harness = make_harness(broker=broker, store=store)
    harness.settings["tmapp.db"] = f"sqlite:///{tmp_path}/app.sqlite"
    ini = write_ini(tmp_path / "tmapp.ini", harness.settings, app="call:integration.sampleapp.tm:main")
    daemon = harness.start(ini=ini)
    wsgi = main({}, **harness.settings)
    harness.proxies.append(wsgi.registry.scheduler)
    return harness, daemon, webtest.TestApp(wsgi)


@pytest.mark.parametrize(
    "tm_harness", [("sqlite", "sqlite"), ("redis", "postgresql")], ids=["sqlite", "redis-postgresql"], indirect=True
)
def test_only_committed_requests_run(tm_harness):
    harness, daemon, app = tm_harness
    proxy = app.app.registry.scheduler
    with pytest.raises(RuntimeError):
        app.get("/order", {"tag": "aborted", "fail": "1"})
    app.get("/order", {"tag": "doomed", "doom": "1"})
    with pytest.raises(RuntimeError):
        app.get("/order", {"tag": "immediate", "fail": "1", "immediate": "1"})
    assert app.get("/order", {"tag": "committed"}).json == {"job_id": "committed"}

    # One queue, consumed in order: once the last one sent is stored, the
    # aborted ones (sent before it, were they sent) would be stored too.
    harness.wait_job(proxy, "committed", {"done"}, alive=(daemon,))
    harness.wait_job(proxy, "immediate", {"done"}, alive=(daemon,))
    assert sorted(run["tag"] for run in harness.runs()) == ["committed", "immediate"]
    assert proxy.get_job("aborted") is None and proxy.get_job("doomed") is None
    assert not [e for e in harness.events() if e["job_id"] in ("aborted", "doomed")]
    assert order_tags(harness.settings["tmapp.db"]) == ["committed"]


def test_a_job_with_a_request_runs_in_its_transaction(tm_harness):
    harness, daemon, app = tm_harness
    proxy = app.app.registry.scheduler
    app.get("/report", {"tag": "report-1"})
    record = harness.wait_job(proxy, "report-1", {"done"}, alive=(daemon,))
    assert record["result"] == {"shop": f"shop-{harness.marker}", "tm_active": True, "status": "Active"}
    # Written through request.dbsession, committed by the runner's request.tm.
    assert order_tags(harness.settings["tmapp.db"], source="job") == ["report-1"]
    # The registry was current (the oracle row carries the app's marker).
    assert [run["marker"] for run in harness.runs("report-1")] == [harness.marker]
    # The request was closed after the run: its finished callbacks ran.
    harness.wait_runs("report-1-closed", alive=(daemon,))

    # What a job enqueues is published only if its run commits.
    app.get("/chain", {"tag": "chain-bad", "fail": "1"})
    app.get("/chain", {"tag": "chain-ok"})
    harness.wait_job(proxy, "chain-ok-next", {"done"}, alive=(daemon,))
    assert harness.wait_job(proxy, "chain-bad", {"failed"}, alive=(daemon,))["runs"] == 1
    # Had chain-bad's follow-up been sent during its run, it would be stored
    # before a job sent now (one queue, consumed in order).
    app.get("/order", {"tag": "after-chains"})
    harness.wait_job(proxy, "after-chains", {"done"}, alive=(daemon,))
    assert proxy.get_job("chain-bad-next") is None
    assert not harness.runs("chain-bad-next")
