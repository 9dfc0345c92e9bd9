"""``pscheduler CONFIG-URI COMMAND``: the operator's commands, against a real
daemon where they change something; ``--json`` parsed, exit codes, tables
within 80 columns and without colour when not on a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemons import TESTS, pscheduler_argv
from integration.conftest import wait_until
from integration.sampleapp import failing, jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def command(ini: Path, *args: str) -> tuple[int, str, str]:
    """``pscheduler INI *args`` to its end: (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    env.pop("NO_COLOR", None)
    done = subprocess.run(
        [*pscheduler_argv(), str(ini), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ini.parent,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr


def as_json(ini: Path, *args: str) -> Any:
    code, out, err = command(ini, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def text(ini: Path, *args: str) -> str:
    """The text output of a command that succeeds, uncoloured; its lines
    (but an error's traceback, indented) checked to fit 80 columns."""
    code, out, err = command(ini, *args)
    assert code == 0, err
    assert "\x1b" not in out
    lines = [line for line in out.splitlines() if not line.startswith("  ")]
    assert max(map(len, lines), default=0) <= 80, out
    return out


def test_reads_and_usage_errors_without_a_daemon(harness):
    ini = harness.write_ini()
    assert as_json(ini, "jobs") == []
    assert text(ini, "jobs") == "no jobs\n"
    [queue] = as_json(ini, "daemons")
    assert queue["queue"] == "jobs" and queue["daemons"] == [] and queue["owner"] is None
    assert "(none)" in text(ini, "daemons")
    assert as_json(ini, "dead-letters") == []
    assert as_json(ini, "runs") == []
    assert as_json(ini, "stats")["jobs"] == []
    code, out, err = command(ini, "job", "no-such-job", "--json")
    assert (code, out) == (1, "") and "no record" in err
    for verb in ("cancel", "pause", "resume", "run", "retry"):
        assert command(ini, verb, "no-such-job")[0] == 1, verb
    assert command(ini, "dead-letters", "delete", "7")[0] == 1
    assert command(ini, "dead-letters", "replay", "7")[0] == 1
    for args in (
        ["jobs", "--limit", "0"],
        ["jobs", "--status", "sleeping"],
        ["jobs", "--queue", "nope"],
        ["job"],
        ["dead-letters", "delete"],
        ["dead-letters", "replay"],
        ["dead-letters", "list", "--force"],
        ["--processes", "2", "jobs"],
        ["no-such-command"],
    ):
        code, out, err = command(ini, *args)
        assert code == 2, (args, out, err)


def test_commands_against_a_daemon(make_harness):
    harness = make_harness(queues="jobs reports")
    proxy = harness.proxy()
    ini = harness.write_ini()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    oracle = harness.oracle
    every, once, flaky = tag("interval"), tag("done"), tag("flaky-with-a-long-name-that-a-table-must-cut")
    proxy.add_interval_job(jobs.record, args=[oracle, every], hours=1, id=every, queue="reports")
    proxy.add_async_job(jobs.record, args=[oracle, once], id=once)
    proxy.add_async_job(failing.flaky, args=[oracle, flaky, 1], id=flaky)
    harness.wait_job(proxy, once, {"done"}, alive=(daemon,))
    harness.wait_job(proxy, flaky, {"failed"}, alive=(daemon,))
    harness.wait_job(proxy, every, {"scheduled"}, alive=(daemon,))

    # Reading: the proxy's own field names, filters, 80 columns.
    listed = {record["id"]: record for record in as_json(ini, "jobs")}
    assert set(listed) == {every, once, flaky}
    assert listed[flaky] == proxy.get_job(flaky) | {"next_run_time": listed[flaky]["next_run_time"]}
    assert [r["id"] for r in as_json(ini, "jobs", "--status", "failed")] == [flaky]
    assert [r["id"] for r in as_json(ini, "jobs", "--func", "flaky")] == [flaky]
    assert [r["id"] for r in as_json(ini, "jobs", "--queue", "reports")] == [every]
    assert len(as_json(ini, "jobs", "--limit", "1")) == 1
    table = text(ini, "jobs")
    assert table.splitlines()[0].split()[:3] == ["ID", "FUNCTION", "QUEUE"]
    assert "every 1h" in table and "failed" in table

    detail = as_json(ini, "job", every)
    assert detail["id"] == every and detail["status"] == "scheduled" and len(detail["next_fire_times"]) == 5
    assert detail["history"] == []
    shown = text(ini, "job", flaky)
    assert "ConnectionError" in shown and "fails on purpose" in shown
    assert [run["status"] for run in as_json(ini, "runs", "--job", flaky)] == ["failed"]
    latest = as_json(ini, "runs")
    assert {run["job_id"] for run in latest} == {once, flaky}
    text(ini, "runs")
    [served] = [q for q in as_json(ini, "daemons") if q["queue"] == "jobs"]
    assert [d["pid"] for d in served["daemons"]] == [daemon.pid]
    assert str(daemon.pid) in text(ini, "daemons")
    stats = as_json(ini, "stats")
    counts = {(row["queue"], row["status"]): row["count"] for row in stats["jobs"]}
    assert counts == {("jobs", "done"): 1, ("jobs", "failed"): 1, ("reports", "scheduled"): 1}
    assert sum(row["count"] for row in stats["runs"]) == 2
    text(ini, "stats")

    # Changing: through the daemon, checked against the record first.
    assert as_json(ini, "pause", every) == {
        "id": every,
        "queue": "reports",
        "request": "pause",
        "status": "scheduled",
        "daemons": 1,
    }
    harness.wait_job(proxy, every, {"paused"}, alive=(daemon,))
    code, _, err = command(ini, "pause", every)
    assert code == 1 and "is paused" in err
    assert command(ini, "run", every)[0] == 1
    assert "resume of job" in text(ini, "resume", every)
    harness.wait_job(proxy, every, {"scheduled"}, alive=(daemon,))
    assert command(ini, "run", every)[0] == 0
    harness.wait_runs(every, alive=(daemon,))
    assert command(ini, "cancel", every)[0] == 0
    harness.wait_job(proxy, every, {"canceled"}, alive=(daemon,))
    assert command(ini, "cancel", every)[0] == 1

    assert command(ini, "retry", once)[0] == 1  # done: nothing to retry
    assert command(ini, "retry", flaky)[0] == 0
    record = harness.wait_job(proxy, flaky, {"done"}, alive=(daemon,))
    assert record["result"] == flaky and len(harness.runs(flaky)) == 2

    # Housekeeping's purge, from the command line (with a short result_ttl).
    short = harness.write_ini(harness.app_settings(**{"scheduler.result_ttl": "1s"}))
    wait_until(lambda: as_json(short, "purge")["purged"] and proxy.get_job(once) is None, "the purge of finished jobs")
    assert proxy.get_job(once) is None

    # Dead letters: a message signed with another secret is refused at the door.
    stranger = harness.proxy(**{"scheduler.secret": "not-the-daemon-secret-0123456789"})
    forged = tag("forged")
    stranger.add_async_job(jobs.record, args=[oracle, forged], id=forged)
    [letter] = wait_until(lambda: as_json(ini, "dead-letters"), "the dead letter", alive=(daemon,))
    assert "signature" in letter["reason"] and letter["whole"] is True
    assert letter["replayable"] is True and letter["signed"] is False and "message" not in letter
    assert "signature" in text(ini, "dead-letters")
    # Replayed (after a look: it was not signed with the daemons' secret), it runs.
    code, _, err = command(ini, "dead-letters", "replay", str(letter["id"]))
    assert code == 1 and "replay it with force" in err
    replayed = as_json(ini, "dead-letters", "replay", str(letter["id"]), "--force")
    assert replayed == {"id": letter["id"], "replayed": True, "job_id": forged}
    assert harness.wait_job(proxy, forged, {"done"}, alive=(daemon,))["result"]["tag"] == forged
    assert as_json(ini, "dead-letters") == []
    assert command(ini, "dead-letters", "replay", str(letter["id"]))[0] == 1
    # Or deleted.
    stranger.add_async_job(jobs.record, args=[oracle, tag("forged")])
    [letter] = wait_until(lambda: as_json(ini, "dead-letters"), "the second dead letter", alive=(daemon,))
    assert as_json(ini, "dead-letters", "delete", str(letter["id"])) == {"id": letter["id"], "deleted": True}
    assert command(ini, "dead-letters", "delete", str(letter["id"]))[0] == 1
    assert daemon.alive
