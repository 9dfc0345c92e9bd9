"""Managing stored jobs from the web side (pause, resume, run now,
reschedule) and the calendar and delay schedules, with a real ``pscheduler``:
the daemon's events (in the oracle), the job records and the runs show it."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def event_types(harness, job_id):
    return [row["type"] for row in harness.events(job_id)]


def wait_event(harness, job_id, kind, count=1, alive=()):
    return wait_until(
        lambda: (lambda t: t if t.count(kind) >= count else None)(event_types(harness, job_id)),
        f"{count} {kind} event(s) of {job_id}",
        alive=alive,
    )


@pytest.mark.parametrize(("broker", "store"), [("sqlite", "sqlite"), ("redis", "postgresql")])
def test_pause_resume_run_now_and_reschedule(make_harness, broker, store):
    harness = make_harness(broker, store)
    proxy = harness.proxy()
    daemon = harness.start()
    alive = (daemon,)
    job_id = f"managed-{uuid.uuid4().hex[:8]}"
    # Hourly: it runs only when asked to.
    proxy.add_interval_job(jobs.record, args=[harness.oracle, job_id], hours=1, id=job_id)
    harness.wait_job(proxy, job_id, {"scheduled"}, alive=alive)

    # Run now: the usual run events with the job's id; it stays scheduled.
    assert proxy.run_job_now(job_id) == job_id
    harness.wait_runs(job_id, 1, alive=alive)
    wait_event(harness, job_id, "job.executed", alive=alive)
    record = harness.wait_job(proxy, job_id, {"scheduled"}, alive=alive)
    assert record["runs"] == 1

    # Pause: the record says so; run now is refused (with an event) while paused.
    proxy.pause_job(job_id)
    harness.wait_job(proxy, job_id, {"paused"}, alive=alive)
    wait_event(harness, job_id, "job.paused", alive=alive)
    assert proxy.preview_job(job_id, n=2), "a paused job previews its times if resumed"
    proxy.run_job_now(job_id)
    wait_event(harness, job_id, "job.request_refused", alive=alive)
    proxy.pause_job(job_id)  # already paused: refused, with an event
    wait_event(harness, job_id, "job.request_refused", 2, alive=alive)
    assert len(harness.runs(job_id)) == 1

    # Reschedule while paused: the new trigger is in the record; still paused.
    proxy.reschedule_job(job_id, cron="15 3 * * *", timezone="Europe/Paris")
    wait_event(harness, job_id, "job.rescheduled", alive=alive)
    record = proxy.get_job(job_id)
    assert record["status"] == "paused"
    assert record["kind"] == "cron"
    assert record["trigger"] == {"type": "cron", "timezone": "Europe/Paris", "crontab": "15 3 * * *"}
    expected = proxy.preview(cron="15 3 * * *", timezone="Europe/Paris", n=5)
    assert proxy.preview_job(job_id, n=5) == expected
    assert all((t.hour, t.minute, t.tzinfo) == (3, 15, ZoneInfo("Europe/Paris")) for t in expected)

    # Resume: scheduled again, from the new trigger's next time.
    proxy.resume_job(job_id)
    harness.wait_job(proxy, job_id, {"scheduled"}, alive=alive)
    wait_event(harness, job_id, "job.resumed", alive=alive)

    # Reschedule a running schedule: every second now.
    proxy.reschedule_job(job_id, "interval", seconds=1)
    harness.wait_runs(job_id, 2, alive=alive)  # the run-now run and one more
    proxy.cancel_job(job_id)
    harness.wait_job(proxy, job_id, {"canceled"}, alive=alive)
    types = wait_event(harness, job_id, "job.canceled", alive=alive)
    assert [t for t in types if t not in ("job.executed", "job.missed")] == [
        "job.created",
        "job.paused",
        "job.request_refused",
        "job.request_refused",
        "job.rescheduled",
        "job.resumed",
        "job.rescheduled",
        "job.canceled",
    ]

    # A job the daemon does not have: refused with an event, never silent.
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    proxy.pause_job(ghost)
    wait_event(harness, ghost, "job.request_refused", alive=alive)
    harness.wait_log(daemon, f"job {ghost} (queue jobs): pause refused: no such live job")
    # A finished job is refused at once, in the caller.
    with pytest.raises(Exception, match=f"job_id: job '{job_id}' is canceled"):
        proxy.resume_job(job_id)
    assert daemon.terminate() == 0


def test_delays_and_calendars(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    alive = (daemon,)
    harness.wait_active(proxy, daemon)
    soon, later = f"soon-{uuid.uuid4().hex[:6]}", f"cal-{uuid.uuid4().hex[:6]}"

    sent = datetime.now(timezone.utc)
    proxy.add_date_job(jobs.record, args=[harness.oracle, soon], millis=700, id=soon, timezone="America/New_York")
    proxy.add_cron_job(
        jobs.record,
        args=[harness.oracle, later],
        weekdays=[1, 5],
        time_of_day=(7, 30),
        timezone="America/New_York",
        id=later,
    )

    record = harness.wait_job(proxy, soon, {"done"}, alive=alive)
    (run,) = harness.runs(soon)
    assert run["at"] >= sent.timestamp() + 0.7 - 0.05
    assert record["trigger"]["timezone"] == "America/New_York"
    assert (
        datetime.fromisoformat(record["trigger"]["run_date"]).utcoffset()
        == datetime.now(ZoneInfo("America/New_York")).utcoffset()
    )

    record = harness.wait_job(proxy, later, {"scheduled"}, alive=alive)
    assert {k: record["trigger"][k] for k in ("day_of_week", "hour", "minute", "second", "timezone")} == {
        "day_of_week": "mon,fri",
        "hour": 7,
        "minute": 30,
        "second": 0,
        "timezone": "America/New_York",
    }
    times = proxy.preview_job(later, n=6)
    assert {(t.isoweekday(), t.hour, t.minute) for t in times} <= {(1, 7, 30), (5, 7, 30)}
    assert len(times) == 6 and all(t.tzinfo == ZoneInfo("America/New_York") for t in times)

    # A paused job stays paused across a restart of the daemon.
    proxy.pause_job(later)
    harness.wait_job(proxy, later, {"paused"}, alive=alive)
    assert daemon.terminate() == 0
    second = harness.start()
    harness.wait_active(proxy, second)
    proxy.run_job_now(later)
    refused = wait_event(harness, later, "job.request_refused", alive=(second,))
    assert refused[-1] == "job.request_refused"
    harness.wait_log(second, f"job {later} (queue jobs): run_now refused: the job is paused")
    assert proxy.get_job(later)["status"] == "paused"
    proxy.resume_job(later)
    harness.wait_job(proxy, later, {"scheduled"}, alive=(second,))
    assert harness.runs(later) == []
    assert second.terminate() == 0
