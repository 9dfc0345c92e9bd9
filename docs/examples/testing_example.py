"""An application's jobs, views and test, on pyramid_scheduler.testing.

docs/testing.rst shows this file; tests/test_testing.py runs its test.
"""

import time

from pyramid.config import Configurator
from webtest import TestApp

from pyramid_scheduler.api import JobExecuted

SENT = []


# -- the application ---------------------------------------------------------


def send_reminder(user_id):
    SENT.append(user_id)
    return {"reminded": user_id}


def remind_view(request):
    """POST /remind/{user}: remind the user in 24 hours."""
    user_id = int(request.matchdict["user"])
    job_id = request.scheduler.add_date_job(send_reminder, time.time() + 24 * 3600, args=[user_id])
    return {"job_id": job_id}


def includeme(config):
    config.add_route("remind", "/remind/{user}")
    config.add_view(remind_view, route_name="remind", request_method="POST", renderer="json")


# -- its test ----------------------------------------------------------------


def test_the_reminder_is_sent_a_day_later():
    SENT.clear()
    config = Configurator(settings={"scheduler.timezone": "Europe/Paris"})
    config.include("pyramid_scheduler.testing")  # no broker, no daemon
    config.include(includeme)
    executed = config.testing_add_subscriber(JobExecuted)
    app = TestApp(config.make_wsgi_app())
    scheduler = app.app.registry.scheduler

    job_id = app.post("/remind/42").json["job_id"]
    job = scheduler.get_job(job_id)
    assert job["func"] == "testing_example:send_reminder"
    assert job["args"] == [42] and job["status"] == "scheduled"

    scheduler.clock.advance(hours=23)  # not yet
    assert SENT == []
    scheduler.clock.advance(hours=2)  # the run falls due on the way
    assert SENT == [42]
    assert scheduler.get_job(job_id)["status"] == "done"
    assert scheduler.get_job(job_id)["result"] == {"reminded": 42}
    assert [event.job_id for event in executed] == [job_id]
