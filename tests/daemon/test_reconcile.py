"""Reconcile (:mod:`pyramid_scheduler.daemon.reconcile`): the jobs declared
in the application's code, applied as the engine starts: a new declaration
stored, an unchanged one left alone, a changed or moved one replaced.

Real engines on a real SQLite job store, built from applications that
declare with ``config.add_scheduled_job``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from pyramid.config import Configurator

from conftest import make_settings
from integration.sampleapp import jobs
from pyramid_scheduler.api import Event
from pyramid_scheduler.daemon.engine import Engine


def test_a_declaration_moved_to_another_queue_moves(tmp_var, caplog):
    settings = {**make_settings(tmp_var), "scheduler.queues": "jobs reports"}

    def start(queues, queue, broken=False):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
            config.add_scheduled_job(
                jobs.record, id="weekly", crontab="0 3 * * mon", queue=queue, args=["oracle", "weekly"]
            )
        proxy = config.registry.scheduler
        if broken:  # stored by a daemon whose code lost the function
            proxy.declared["broken"] = replace(proxy.declared["weekly"], id="broken", func="nowhere:gone")
        engine = Engine(proxy, queues)
        events = []
        proxy.add_listener(events.append)
        engine.join()
        engine.start()
        engine.stop(timeout=1)
        proxy.close()
        return proxy, events

    proxy, events = start(("jobs", "reports"), "jobs", broken=True)
    assert proxy.get_job("weekly")["queue"] == "jobs" and proxy.get_job("broken") is None
    assert "job broken (queue jobs): declared, but could not be stored" in caplog.text
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_CREATED]
    # Declared on reports now, but only the reports daemon starts: it leaves jobs alone.
    proxy, _ = start(("reports",), "reports")
    assert proxy.get_job("weekly")["queue"] == "jobs" and proxy.get_job("weekly")["status"] == "scheduled"
    assert "still stored on queue jobs" in caplog.text
    # The jobs daemon removes it from jobs ...
    proxy, events = start(("jobs",), "reports")
    assert proxy.get_job("weekly")["status"] == "canceled"
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_REMOVED]
    # ... and the reports daemon stores it there.
    proxy, events = start(("reports",), "reports")
    record = proxy.get_job("weekly")
    assert record["queue"] == "reports" and record["status"] == "scheduled"
    assert [e.type for e in events if e.get("job_id") == "weekly"] == [Event.JOB_CREATED]


def test_an_unchanged_declaration_is_left_alone_a_changed_one_updated(tmp_var, caplog):
    caplog.set_level(logging.INFO, logger="pyramid_scheduler.daemon.reconcile")
    settings = make_settings(tmp_var)

    def start(minutes):
        with Configurator(settings=settings) as config:
            config.include("pyramid_scheduler")
            config.add_scheduled_job(jobs.record, id="sync", minutes=minutes, args=["oracle", "sync"])
        proxy = config.registry.scheduler
        engine = Engine(proxy)
        events = []
        proxy.add_listener(events.append)
        engine.join()
        engine.start()
        next_run = engine.aps.get_job("sync").next_run_time
        engine.stop(timeout=1)
        record = proxy.get_job("sync")
        proxy.close()
        return record, next_run, [e.type for e in events if e.get("job_id") == "sync"]

    first, first_run, events = start(10)
    assert events == [Event.JOB_CREATED]
    again, again_run, events = start(10)
    assert events == [] and again_run == first_run
    assert (again["created_at"], again["updated_at"]) == (first["created_at"], first["updated_at"])
    assert "declaration changed" not in caplog.text
    changed, changed_run, events = start(20)
    assert events == [] and changed["trigger"]["minutes"] == 20 and changed_run > first_run
    assert changed["created_at"] == first["created_at"] and changed["status"] == "scheduled"
    assert "job sync (queue jobs): declaration changed; stored job updated" in caplog.text
