"""Nothing a sender controls forges a log line (issue 16, item 6).

Job ids and queue names with control characters are refused by
``add_*_job``/``cancel_job`` and at the daemon's door; every other field
(``--message`` text, references, reasons) is logged with its control
characters escaped, by one filter on every ``pyramid_scheduler`` logger.
Checked on a real ``pscheduler``'s log.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import pytest
from pyramid.exceptions import ConfigurationError
from test_security import publish_raw

import pyramid_scheduler
from conftest import make_settings
from integration.conftest import make_harness  # noqa: F401 - the fixture
from integration.sampleapp import jobs
from pyramid_scheduler import InvalidJob, InvalidQueue
from pyramid_scheduler.brokers.connection import make_queue
from pyramid_scheduler.logs import escape, get_logger
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.web.proxy import SchedulerProxy
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

FORGED = "\n2026-12-03 09:00:00,000 ERROR [pyramid_scheduler.daemon.engine] forged"
BAD_NAMES = ["a\nb", "a\rb", "nul\x00", "esc\x1b[31m", "tab\t", "del\x7f", "c1\x85", "ls\u2028"]


@pytest.fixture
def proxy(tmp_var):
    proxy = SchedulerProxy(parse_settings(make_settings(tmp_var)))
    yield proxy
    proxy.close()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_add_job_and_cancel_job_refuse_control_characters_in_ids(proxy, name):
    with pytest.raises(InvalidJob, match="^id: .*control character"):
        proxy.add_async_job(jobs.noop, args=[1], id=name, immediate=True)
    with pytest.raises(InvalidJob, match="^job_id: .*control character"):
        proxy.cancel_job(name, immediate=True)
    with pytest.raises(InvalidJob, match="^job_id: .*control character"):
        proxy.pause_job(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_queue_names_with_control_characters_are_refused(proxy, name):
    # Only the names of scheduler.queues are taken, and those are letters, digits, '_', '.', '-'.
    with pytest.raises(InvalidQueue, match=re.escape(f"unknown queue {name!r}")):
        proxy.add_async_job(jobs.noop, args=[1], queue=name, immediate=True)
    with pytest.raises(InvalidQueue, match="unknown queue"):
        proxy.cancel_job("x", queue=name, immediate=True)
    if name.split() == [name]:  # (whitespace separates the names of the list)
        with pytest.raises(ConfigurationError, match="scheduler.queues"):
            parse_settings({"scheduler.queues": f"jobs {name}"})


def test_the_filter_escapes_arguments_not_formats(caplog):
    log = get_logger("pyramid_scheduler.test_escapes")
    with caplog.at_level(logging.INFO, logger="pyramid_scheduler.test_escapes"):
        log.info("job %s (queue %s): %d run(s), %r", f"x{FORGED}", "q\x1b[2J", 3, "r\n")
        log.info("a mapping %(id)s", {"id": "m\nn"})
    assert [r.getMessage() for r in caplog.records] == [
        f"job x{escape(FORGED)} (queue q\\x1b[2J): 3 run(s), 'r\\n'",
        "a mapping m\\nn",
    ]
    assert "\n" not in caplog.text.rstrip("\n").replace("\n", "", len(caplog.records) - 1)
    assert escape("é ü \u00a0 ok") == "é ü \u00a0 ok"


@pytest.mark.integration
@pytest.mark.slow
def test_a_daemon_log_cannot_be_forged(make_harness):  # noqa: F811
    harness = make_harness()
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)

    # --message text is the sender's: escaped in the daemon's log.
    code, sent = harness.run("--message", f"hello{FORGED}", "--listeners")
    assert code == 0, sent
    harness.wait_log(daemon, f"message on queue jobs: hello{escape(FORGED)}")

    # A signed message whose job id holds a newline is refused at the door.
    secret = harness.settings["scheduler.secret"].encode()
    key = make_queue(proxy.settings, "jobs").routing_key
    for index, job_id in enumerate([f"id{FORGED}", "nul\x00id"]):
        body = JobRequest(
            op="add",
            id=job_id,
            queue="jobs",
            func="integration.sampleapp.jobs:noop",
            args=[index],
            trigger=trigger_spec("now", proxy.settings.timezone, run_date=proxy.now()),
        ).encode()
        publish_raw(proxy, body, {SIGNATURE_HEADER: sign_message(body, secret, key)})
    for cancel in (
        JobRequest(op="cancel", id=f"c{FORGED}", queue="jobs").encode(),
        JobRequest(op="cancel", id="c", queue=f"jobs{FORGED}").encode(),
    ):
        publish_raw(proxy, cancel, {SIGNATURE_HEADER: sign_message(cancel, secret, key)})
    tag = f"after-{uuid.uuid4().hex[:6]}"
    proxy.add_async_job(jobs.record, args=[harness.oracle, tag])
    harness.wait_runs(tag, alive=(daemon,))
    harness.wait_log(daemon, "field 'id': 'nul\\x00id' holds a control character")
    assert daemon.log().count("holds a control character") == 4
    assert daemon.terminate() == 0
    lines = daemon.log().splitlines()
    assert [line for line in lines if "forged" in line and not line.startswith("SAMPLELOG")] == []
    assert not [line for line in lines if line.startswith("2026-12-03 09:00:00,000 ERROR")]


def test_every_module_logs_through_the_escaping_logger():
    package = Path(pyramid_scheduler.__file__).parent
    plain = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "logging.getLogger(" in path.read_text(encoding="utf-8")
        and path.name != "logs.py"
        and "demo" not in path.parts
    ]
    assert plain == [], "use pyramid_scheduler.logs.get_logger"
