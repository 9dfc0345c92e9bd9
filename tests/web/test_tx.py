"""Transaction-aware enqueue: a WebTest app with pyramid_tm and a zope.sqlalchemy
session publishes on commit only (read back from the SQL broker's table)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import transaction
import webtest

from conftest import make_settings
from integration.sampleapp import jobs
from integration.sampleapp.tm import add_order, main, order_tags
from producers import published
from pyramid_scheduler import InvalidJob


@pytest.fixture
def settings(tmp_var: Path) -> dict[str, str]:
    return {
        **make_settings(tmp_var),
        "sampleapp.oracle": str(tmp_var / "oracle.sqlite"),
        "sampleapp.marker": "tx",
        "tmapp.db": f"sqlite:///{tmp_var}/app.sqlite",
    }


def make_app(settings: dict[str, str], **overrides: str) -> tuple[webtest.TestApp, Any]:
    wsgi = main({}, **{**settings, **overrides})
    return webtest.TestApp(wsgi), wsgi.registry.scheduler


@pytest.fixture
def app(settings: dict[str, str]) -> Any:
    app, scheduler = make_app(settings)
    yield app
    scheduler.close()


@pytest.fixture(autouse=True)
def clean_thread_transaction() -> Any:
    yield
    transaction.abort()


def sent(var: Path) -> list[tuple[str, str]]:
    return [(request.op, request.id) for _, request in published(var)]


def test_committed_request_publishes(app, settings, tmp_var):
    assert app.get("/order", {"tag": "ok-1"}).json == {"job_id": "ok-1"}
    assert sent(tmp_var) == [("add", "ok-1")]
    assert order_tags(settings["tmapp.db"]) == ["ok-1"]


def test_aborted_request_publishes_nothing(app, settings, tmp_var):
    with pytest.raises(RuntimeError, match="fails after enqueueing"):
        app.get("/order", {"tag": "bad-1", "fail": "1"})
    app.get("/order", {"tag": "doomed-1", "doom": "1"})
    assert sent(tmp_var) == []
    assert order_tags(settings["tmapp.db"]) == []


def test_immediate_publishes_even_when_the_request_aborts(app, settings, tmp_var):
    with pytest.raises(RuntimeError):
        app.get("/order", {"tag": "now-1", "fail": "1", "immediate": "1"})
    assert sent(tmp_var) == [("add", "now-1")]
    assert order_tags(settings["tmapp.db"]) == []


def test_cancel_waits_for_the_commit_too(app, tmp_var):
    with pytest.raises(RuntimeError):
        app.get("/cancel", {"id": "job-1", "fail": "1"})
    assert sent(tmp_var) == []
    app.get("/cancel", {"id": "job-1"})
    assert sent(tmp_var) == [("cancel", "job-1")]


def test_explicit_request_manager(settings, tmp_var):
    app, scheduler = make_app(settings, **{"tm.manager_hook": "pyramid_tm.explicit_manager"})
    try:
        with pytest.raises(RuntimeError):
            app.get("/order", {"tag": "explicit-bad", "fail": "1"})
        app.get("/order", {"tag": "explicit-ok"})
    finally:
        scheduler.close()
    assert sent(tmp_var) == [("add", "explicit-ok")]


def test_transactional_false_publishes_at_once(settings, tmp_var):
    app, scheduler = make_app(settings, **{"scheduler.transactional": "false"})
    try:
        with pytest.raises(RuntimeError):
            app.get("/order", {"tag": "eager-1", "fail": "1"})
    finally:
        scheduler.close()
    assert sent(tmp_var) == [("add", "eager-1")]


def test_bad_job_fails_at_call_time_inside_a_transaction(app, settings):
    scheduler = app.app.registry.scheduler
    with transaction.manager:
        with pytest.raises(Exception, match="kwargs"):
            scheduler.add_async_job(jobs.record, args=[1, 2], kwargs={"x": object()})
        with pytest.raises(Exception, match="immediate: expected True or False"):
            scheduler.add_async_job(jobs.record, args=["o", "t"], immediate="yes")


def test_thread_transaction_outside_requests(app, tmp_var):
    scheduler = app.app.registry.scheduler
    # No transaction open: published at once.
    scheduler.add_async_job(jobs.record, args=["oracle", "script-1"], id="script-1")
    assert sent(tmp_var) == [("add", "script-1")]
    with transaction.manager:
        job_id = scheduler.add_async_job(jobs.record, args=["oracle", "script-2"], id="script-2")
        scheduler.send_message("hello")
        assert job_id == "script-2"
        assert sent(tmp_var) == [("add", "script-1")]
    assert [op for op, _ in sent(tmp_var)] == ["add", "add", "message"]
    transaction.begin()
    scheduler.add_async_job(jobs.record, args=["oracle", "script-3"], id="script-3")
    transaction.abort()
    assert "script-3" not in [job_id for _, job_id in sent(tmp_var)]


def test_savepoint_rollback_drops_what_was_held_after_it(app, tmp_var):
    scheduler = app.app.registry.scheduler

    def add(tag):
        scheduler.add_async_job(jobs.record, args=["oracle", tag], id=tag)

    with transaction.manager as txn:
        first = txn.savepoint()  # before anything was held
        add("dropped-1")
        first.rollback()
        add("kept-1")
        second = txn.savepoint()
        add("dropped-2")
        second.rollback()
        add("kept-2")
    assert sent(tmp_var) == [("add", "kept-1"), ("add", "kept-2")]


def test_publish_failure_after_commit_is_logged_with_the_job_id(settings, tmp_var, caplog):
    app, scheduler = make_app(
        settings, **{"scheduler.broker.url": "redis://127.0.0.1:1/0", "scheduler.broker.timeout": "0.5"}
    )
    try:
        with caplog.at_level(logging.ERROR, logger="pyramid_scheduler.web.tx"):
            assert app.get("/order", {"tag": "lost-1"}).json == {"job_id": "lost-1"}
    finally:
        scheduler.close()
    (record,) = [r for r in caplog.records if r.name == "pyramid_scheduler.web.tx"]
    assert "job lost-1" in record.getMessage() and "NOT PUBLISHED" in record.getMessage()
    assert "lost-1" in record.getMessage().split("Message:")[1]


def takes_request_first(request, a):
    return a


def takes_request_later(a, *, request):
    return a


def test_request_parameter_is_the_runners(app, tmp_var):
    scheduler = app.app.registry.scheduler
    scheduler.add_async_job(takes_request_first, args=[1], immediate=True)
    scheduler.add_async_job(takes_request_later, args=[1], immediate=True)
    with pytest.raises(InvalidJob, match=r"kwargs\['request'\]: the runner passes"):
        scheduler.add_async_job(takes_request_first, kwargs={"a": 1, "request": "mine"})
    with pytest.raises(InvalidJob, match="takes_request_first"):
        scheduler.add_async_job(takes_request_first, args=[1, 2])
    assert len(sent(tmp_var)) == 2


# -- outside the tween: scripts and pshell, as the Pyramid starter writes them ------------
@pytest.fixture
def explicit(settings: dict[str, str]) -> Any:
    """The starter's set-up: ``tm.manager_hook = pyramid_tm.explicit_manager``."""
    app, scheduler = make_app(settings, **{"tm.manager_hook": "pyramid_tm.explicit_manager"})
    yield app.app.registry
    scheduler.close()


def script_env(registry: Any) -> Any:
    """What ``bootstrap()``/``prepare()`` give a script or pshell."""
    from pyramid.scripting import prepare

    return prepare(registry=registry)


def test_script_with_request_tm_holds_until_commit(explicit, settings, tmp_var):
    # The starter's initialize_db: ``with env['request'].tm:``.
    with script_env(explicit) as env:
        request = env["request"]
        with request.tm:
            add_order(request, "script-ok", "script")
            request.dbsession.flush()
            explicit.scheduler.add_async_job(jobs.record, args=["oracle", "script-ok"], id="script-ok")
            assert sent(tmp_var) == []  # the row is not committed yet: neither is the job
        assert sent(tmp_var) == [("add", "script-ok")]
        assert order_tags(settings["tmapp.db"]) == ["script-ok"]
        with pytest.raises(RuntimeError), request.tm:
            add_order(request, "script-bad", "script")
            request.scheduler.add_async_job(jobs.record, args=["oracle", "script-bad"], id="script-bad")
            raise RuntimeError("the script fails")
    assert sent(tmp_var) == [("add", "script-ok")]
    assert order_tags(settings["tmapp.db"]) == ["script-ok"]


def test_pshell_begin_commit_abort_and_savepoints(explicit, tmp_var):
    # The starter's pshell.py: ``request.tm.begin()``, then commit() or abort() by hand.
    with script_env(explicit) as env:
        request = env["request"]
        scheduler = request.registry.scheduler
        request.tm.begin()
        scheduler.add_async_job(jobs.record, args=["oracle", "shell-1"], id="shell-1")
        request.tm.abort()
        request.tm.begin()
        scheduler.add_async_job(jobs.record, args=["oracle", "shell-2"], id="shell-2")
        savepoint = request.tm.savepoint()
        scheduler.add_async_job(jobs.record, args=["oracle", "shell-3"], id="shell-3")
        scheduler.cancel_job("shell-0")
        savepoint.rollback()
        assert sent(tmp_var) == []
        request.tm.commit()
        # No transaction open now: published at once, as before.
        scheduler.add_async_job(jobs.record, args=["oracle", "shell-4"], id="shell-4")
    assert sent(tmp_var) == [("add", "shell-2"), ("add", "shell-4")]


def test_tm_argument_names_the_manager_to_wait_for(app, tmp_var):
    scheduler = app.app.registry.scheduler
    manager = transaction.TransactionManager(explicit=True)
    with manager:
        scheduler.add_async_job(jobs.record, args=["oracle", "own-1"], id="own-1", tm=manager)
        scheduler.cancel_job("own-0", tm=manager)
        scheduler.send_message("print-jobs", tm=manager)
        assert sent(tmp_var) == []
    assert sent(tmp_var)[:2] == [("add", "own-1"), ("cancel", "own-0")]
    with pytest.raises(RuntimeError), manager:
        scheduler.add_async_job(jobs.record, args=["oracle", "own-2"], id="own-2", tm=manager)
        raise RuntimeError("aborts")
    assert "own-2" not in [job_id for _, job_id in sent(tmp_var)]
    # A manager with no transaction open: at once, even inside the thread's transaction.
    with transaction.manager:
        scheduler.add_async_job(jobs.record, args=["oracle", "own-3"], id="own-3", tm=manager)
        assert ("add", "own-3") in sent(tmp_var)


def test_tm_argument_is_checked(app):
    scheduler = app.app.registry.scheduler
    with pytest.raises(InvalidJob, match="tm: expected a transaction manager"):
        scheduler.add_async_job(jobs.record, args=["o", "t"], tm="request.tm")
    with pytest.raises(InvalidJob, match="tm: .* pass one or the other"):
        scheduler.cancel_job("x", immediate=True, tm=transaction.TransactionManager())
