"""The task decorators (pyramid_scheduler.tasks) under the testing kit, and
``scheduler.enabled = false``: through the public API (``@task``,
``delay()``, ``JobHandle``, ``@periodic``/``@cron`` with ``config.scan()``)
and WebTest views. The daemon end to end is in integration/test_tasks.py."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
import transaction
from pyramid.config import Configurator
from webtest import TestApp

from integration.sampleapp import tasks as sample
from pyramid_scheduler import InvalidJob, JobHandle, SchedulerError, task
from pyramid_scheduler.exceptions import JobTimeout
from pyramid_scheduler.testing import TestingScheduler

CALLS: list[Any] = []


@task
def multiply(x: int, y: int) -> int:
    CALLS.append(("multiply", x, y))
    return x * y


@task(retries=1, retry_delay=30)
def refuse(order: int) -> None:
    CALLS.append(("refuse", order))
    raise ValueError(f"no such order {order}")


@task(delay=timedelta(hours=1), queue="mail")
def remind(tag: str) -> str:
    return f"reminded {tag}"


def delay_view(request: Any) -> dict[str, Any]:
    handle = multiply.delay(int(request.params["x"]), 7)
    return {"id": handle.id, "status": handle.status}


def make_app(**settings: str) -> tuple[TestApp, Any]:
    settings = {"scheduler.queues": "default mail", **settings}
    config = Configurator(settings=settings)
    config.include("pyramid_scheduler.testing")
    config.add_route("delay", "/delay")
    config.add_view(delay_view, route_name="delay", renderer="json")
    app = config.make_wsgi_app()
    return TestApp(app), app.registry.scheduler


@pytest.fixture
def kit() -> Any:
    CALLS.clear()
    app, scheduler = make_app()
    config = Configurator(registry=app.app.registry)
    config.begin()  # the application's registry is current, as in a view or job
    yield app, scheduler
    config.end()
    scheduler.shutdown()


def test_a_task_is_still_a_plain_function():
    CALLS.clear()
    assert multiply(3, 4) == 12
    assert CALLS == [("multiply", 3, 4)]
    assert multiply.__name__ == "multiply" and multiply.task.options == {}
    assert refuse.task.options == {"retries": 1, "retry_delay": 30}
    assert remind.task.countdown == 3600.0 and remind.task.queue == "mail"


def nested_function_maker() -> Any:
    def inner() -> None: ...

    return inner


class Holder:
    def method(self) -> None: ...


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: task(lambda: None), "a lambda has no importable name"),
        (lambda: task(nested_function_maker()), "is a nested function"),
        (lambda: task(Holder.method), "decorate a module-level function, not a method"),
        (lambda: task(retries=-1)(sample.add.task.func), "retries: expected a number of 0 or more"),
        (lambda: task(ttl="long")(sample.add.task.func), "ttl: expected int or float or None"),
        (lambda: task(delay=-5)(sample.add.task.func), "delay: expected seconds"),
        (lambda: task(queue="")(sample.add.task.func), "queue: expected a string"),
    ],
    ids=["lambda", "nested", "method", "retries", "ttl", "delay", "queue"],
)
def test_decoration_refuses_what_the_daemon_could_not_run(make, says):
    with pytest.raises(InvalidJob, match=says):
        make()


def test_a_view_s_delay_returns_a_handle_that_wait_runs(kit):
    app, scheduler = kit
    sent = app.get("/delay", {"x": "6"}).json
    handle = JobHandle(sent["id"], scheduler)
    assert sent["status"] == "scheduled" and handle.status == "scheduled" and not handle.ready
    assert CALLS == []
    assert handle.wait() is handle
    assert (handle.status, handle.ready, handle.result, handle.error) == ("done", True, 42, None)
    assert CALLS == [("multiply", 6, 7)]
    assert scheduler.get_job(sent["id"])["func"] == "test_tasks:multiply"


def test_the_error_is_the_exception_s_line_after_the_retries(kit):
    _app, scheduler = kit
    handle = refuse.delay(7)
    with pytest.raises(JobTimeout) as raised:
        handle.wait(timeout=10)  # the retry is due 30 s after the first run
    assert isinstance(raised.value, TimeoutError) and raised.value.job_id == handle.id
    assert handle.status == "scheduled" and handle.error == "ValueError: no such order 7"
    handle.wait(timeout=60)
    assert handle.status == "failed" and handle.ready and handle.result is None
    assert handle.error == "ValueError: no such order 7"
    assert "Traceback (most recent call last)" in handle.traceback
    assert handle.record["attempt"] == 2 and CALLS == [("refuse", 7), ("refuse", 7)]


def test_delay_and_apply_at_wait_on_the_fake_clock(kit):
    _app, scheduler = kit
    start = scheduler.now()
    handle = remind.delay("ann")
    assert scheduler.get_job(handle.id)["queue"] == "mail"
    with pytest.raises(JobTimeout, match="did not finish within 60s"):
        handle.wait(timeout=60)
    assert scheduler.now() == start  # not moved: the run is due in an hour
    assert handle.wait(timeout=3600).result == "reminded ann"
    assert scheduler.now() - start == timedelta(hours=1)

    at = scheduler.now() + timedelta(days=1)
    assert multiply.apply_at(at, 2, y=5).wait(timeout=None).result == 10
    assert scheduler.now() == at


def test_cancel_stops_a_waiting_job(kit):
    _app, scheduler = kit
    handle = remind.delay("bob")
    handle.cancel()
    scheduler.run_pending()
    assert handle.status == "canceled" and handle.ready
    handle.cancel()  # finished: nothing more
    scheduler.clock.advance(hours=2)
    assert not [run for run in scheduler.runs if run["job_id"] == handle.id]


def test_inside_a_transaction_the_handle_is_pending_until_the_commit(kit):
    _app, _scheduler = kit
    with transaction.manager:
        handle = multiply.delay(3, 3)
        assert handle.status == "pending" and handle.id
    assert handle.wait().result == 9

    txn = transaction.manager.begin()
    dropped = multiply.delay(4, 4)
    txn.abort()
    with pytest.raises(JobTimeout, match="no record yet"):
        dropped.wait()
    assert CALLS == [("multiply", 3, 3)]


def test_bad_arguments_are_refused_in_the_call(kit):
    with pytest.raises(InvalidJob, match="args"):
        multiply.delay(object(), 2)
    with pytest.raises(InvalidJob):
        multiply.delay(1)  # y missing: the function's signature


def test_without_a_current_scheduler_delay_says_how_to_name_one():
    with pytest.raises(SchedulerError, match=r"multiply.using\(request.scheduler\)"):
        multiply.delay(1, 2)
    _app, scheduler = make_app()
    try:
        handle = multiply.using(scheduler).delay(2, 2)
        assert handle.scheduler is scheduler and handle.wait().result == 4
        bound = task(scheduler=scheduler)(sample.add.task.func)
        assert bound.scheduler() is scheduler
    finally:
        scheduler.shutdown()


def test_periodic_and_cron_declare_jobs_for_config_scan():
    config = Configurator(settings={})
    config.include("pyramid_scheduler.testing")
    config.scan(sample)
    config.commit()
    scheduler: TestingScheduler = config.registry.scheduler
    try:
        assert set(scheduler.declared) == {"tick-now", "tock-later", "daily"}
        assert scheduler.declared["daily"].trigger["crontab"] == "30 7 * * *"
        # start_now: run when stored; then every interval from that run.
        assert [run["job_id"] for run in scheduler.run_pending()] == ["tick-now"]
        runs = scheduler.clock.advance(minutes=10)
        assert sorted(run["job_id"] for run in runs) == ["tick-now", "tock-later"]
        assert scheduler.get_job("tick-now")["runs"] == 2
        assert any(run["job_id"] == "daily" for run in scheduler.clock.advance(hours=24))
    finally:
        scheduler.shutdown()


def test_start_now_goes_with_recurring_declarations_only():
    from pyramid.exceptions import ConfigurationError

    config = Configurator(settings={})
    config.include("pyramid_scheduler")
    with pytest.raises(ConfigurationError, match="start_now"):
        config.add_scheduled_job(sample.add, date="2030-01-01T00:00:00", start_now=True)


# -- scheduler.enabled = false ---------------------------------------------------------
def disabled_app(tmp_path: Any, **settings: str) -> Any:
    """An application with the scheduler off, whose broker nothing listens on:
    anything published would raise EnqueueError."""
    config = Configurator(
        settings={
            "scheduler.enabled": "false",
            "scheduler.queues": "default mail",
            "scheduler.broker.url": "redis://127.0.0.1:1/0",
            "scheduler.broker.timeout": "1s",
            "scheduler.jobstore.url": f"sqlite:///{tmp_path}/jobs.sqlite",
            **settings,
        }
    )
    config.include("pyramid_scheduler")
    config.add_route("delay", "/delay")
    config.add_view(delay_view, route_name="delay", renderer="json")
    config.scan(sample)
    return config.make_wsgi_app()


def test_disabled_delay_runs_inline_and_returns_a_finished_handle(tmp_path):
    CALLS.clear()
    app = disabled_app(tmp_path)
    scheduler = app.registry.scheduler
    try:
        sent = TestApp(app).get("/delay", {"x": "2"}).json
        assert sent["status"] == "done" and CALLS == [("multiply", 2, 7)]

        handle = refuse.using(scheduler).delay(9)  # no retries inline
        assert (handle.status, handle.ready, handle.result) == ("failed", True, None)
        assert handle.error == "ValueError: no such order 9"
        assert handle.wait() is handle
        handle.cancel()
        assert handle.status == "failed"
        # Dates do not apply: a plain call, now.
        assert remind.using(scheduler).delay("eve").result == "reminded eve"
        with pytest.raises(InvalidJob, match="args"):
            multiply.using(scheduler).delay(object(), 1)
    finally:
        scheduler.shutdown()


def test_disabled_add_jobs_run_or_log_and_declarations_are_not_registered(tmp_path, caplog):
    CALLS.clear()
    app = disabled_app(tmp_path)
    scheduler = app.registry.scheduler
    try:
        assert scheduler.declared == {}
        with caplog.at_level(logging.WARNING, logger="pyramid_scheduler"):
            job_id = scheduler.add_async_job(multiply, args=[5, 5])
            assert CALLS == [("multiply", 5, 5)]
            later = scheduler.add_date_job(multiply, delay=60, args=[1, 1])
            scheduler.add_interval_job(multiply, minutes=5, args=[1, 1])
            scheduler.cancel_job(job_id)
            scheduler.add_async_job(refuse, args=[3])  # logged, not raised
        assert CALLS == [("multiply", 5, 5), ("refuse", 3)]
        assert f"job {later} (test_tasks:multiply, date job) is not scheduled" in caplog.text
        assert "ValueError: no such order 3" in caplog.text
        with pytest.raises(InvalidJob, match="cron trigger"):
            scheduler.add_cron_job(multiply, crontab="61 * * * *", args=[1, 1])
    finally:
        scheduler.shutdown()


def test_disabled_combined_mode_starts_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pyramid_scheduler"):
        app = disabled_app(tmp_path, **{"scheduler.combined": "true"})
    try:
        assert app.registry.scheduler.runtime is None
        assert "combined mode starts no scheduler" in caplog.text
    finally:
        app.registry.scheduler.shutdown()
