"""``pscheduler`` as an operator meets it: exit codes and messages, ``-q``,
``--message`` and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from daemons import Daemon, pscheduler_argv, write_ini
from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler.scripts import EXIT_BAD_QUEUE, EXIT_COMBINED, EXIT_NO_SCHEDULER, EXIT_STARTUP_FAILED

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tag(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_refuses_an_application_without_pyramid_scheduler(harness):
    ini = harness.write_ini(harness.app_settings(**{"sampleapp.include_scheduler": "false"}))
    code, output = harness.run(ini=ini, script=True)
    assert code == EXIT_NO_SCHEDULER == 10, output
    assert "the application did not include pyramid_scheduler" in output
    assert "SAMPLELOG" in output  # logged through the INI file's logging configuration


def test_refuses_an_application_in_combined_mode(harness):
    ini = harness.write_ini(harness.app_settings(**{"scheduler.combined": "true"}))
    code, output = harness.run(ini=ini, script=True)
    assert code == EXIT_COMBINED == 11, output
    assert "scheduler.combined = true" in output


def test_refuses_an_unknown_queue(harness):
    code, output = harness.run("-q", "unknown", script=True)
    assert code == EXIT_BAD_QUEUE == 12, output
    assert "-q/--queue: unknown queue 'unknown'; scheduler.queues lists jobs" in output


def test_bad_command_line_exits_2(harness):
    code, output = harness.run("--no-such-option")
    assert code == 2, output
    assert "unrecognized arguments: --no-such-option" in output


@pytest.mark.parametrize("uri, args", [("{ini}#other", []), ("{ini}#main", ["--app-name", "other"])])
def test_app_name_from_the_uri_or_the_option(harness, uri, args):
    ini = write_ini(harness.tmp_path / "named.ini", harness.settings, name="other")
    daemon = Daemon([*pscheduler_argv(), uri.format(ini=ini), *args], harness.tmp_path / "named.log", harness.tmp_path)
    harness.daemons.append(daemon)
    daemon.wait_consuming()
    assert daemon.terminate() == 0, daemon.log()


def test_queue_option_runs_only_that_queue(make_harness):
    harness = make_harness(queues="jobs reports")
    proxy = harness.proxy()
    oracle = harness.oracle
    report_id, job_id = tag("report"), tag("job")
    proxy.add_async_job(jobs.record, args=[oracle, report_id], id=report_id, queue="reports")
    proxy.add_async_job(jobs.record, args=[oracle, job_id], id=job_id, queue="jobs")

    only_jobs = harness.start("-q", "jobs")
    harness.wait_job(proxy, job_id, {"done"}, alive=(only_jobs,))
    # Sent first, on the other queue: not even taken from the broker.
    assert proxy.get_job(report_id) is None
    assert harness.runs(report_id) == []
    daemons = {d["queue"]: d for d in proxy.get_daemons()}
    assert daemons["jobs"]["active"] and daemons["jobs"]["owner"].split(":")[1] == str(only_jobs.pid)
    assert daemons["reports"]["owner"] is None

    # A second daemon for the other queue runs next to the first: leases are per queue.
    only_reports = harness.start("--queue", "reports")
    record = harness.wait_job(proxy, report_id, {"done"}, alive=(only_jobs, only_reports))
    assert record["queue"] == "reports"
    assert [run["pid"] for run in harness.runs(report_id)] == [only_reports.pid]
    assert [run["pid"] for run in harness.runs(job_id)] == [only_jobs.pid]
    assert "another daemon runs queues" not in only_reports.log()


def test_message_reaches_the_running_daemon(harness):
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    every_id = tag("every")
    proxy.add_interval_job(jobs.record, args=[harness.oracle, every_id], hours=1, id=every_id)
    harness.wait_job(proxy, every_id, {"scheduled"}, alive=(daemon,))

    text = f"hello {uuid.uuid4().hex[:6]}"
    code, output = harness.run("--message", text, "--listeners", script=True)
    assert code == 0, output
    assert f"message {text!r} sent to queues jobs" in output

    def delivered() -> list:
        return [row for row in harness.events() if row["type"] == "message" and row["message"] == text]

    (event,) = wait_until(delivered, "the MESSAGE event in the daemon", alive=(daemon,))
    assert event["pid"] == daemon.pid
    assert f"message on queue jobs: {text}" in daemon.log()

    # 'print-jobs' makes the daemon log its jobs.
    code, output = harness.run("--message", "print-jobs")
    assert code == 0, output
    harness.wait_log(daemon, f"job {every_id} (queue jobs) integration.sampleapp.jobs:record next run")


def test_an_unknown_message_is_refused_in_one_line(harness):
    code, output = harness.run("--message", "foo")
    assert code == 2, output
    assert (
        "--message: unknown command 'foo'; expected one of print-jobs, restore-parked "
        "(add --listeners to send other text to your MESSAGE listeners)"
    ) in output
    assert "Traceback" not in output
    code, output = harness.run("--listeners")
    assert code == 2 and "--listeners goes with --message" in output, output


def test_message_to_an_unknown_queue_is_refused(harness):
    code, output = harness.run("--message", "print-jobs", "-q", "nosuch")
    assert code == EXIT_BAD_QUEUE, output
    assert "-q/--queue: unknown queue 'nosuch'; scheduler.queues lists jobs" in output
    assert "sent to queues" not in output


def test_message_goes_only_to_the_queues_given(make_harness):
    harness = make_harness(queues="jobs reports")
    code, output = harness.run("--message", "print-jobs", "-q", "reports")
    assert code == 0, output
    assert "message 'print-jobs' sent to queues reports\n" in output.replace("\r", "")


@pytest.mark.parametrize("name", ["nosuch.ini", "folder"])
def test_a_missing_or_unreadable_config_is_one_line(harness, name):
    (harness.tmp_path / "folder").mkdir(exist_ok=True)
    daemon = Daemon(
        [*pscheduler_argv(), str(harness.tmp_path / name)], harness.tmp_path / "missing.log", harness.tmp_path
    )
    assert daemon.wait(30) == 2
    output = daemon.log()
    reason = "No such file or directory" if name == "nosuch.ini" else "Is a directory"
    assert f"pscheduler: error: CONFIG-URI {harness.tmp_path / name}: {reason}" in output
    assert "Traceback" not in output


def test_a_bad_setting_is_one_line(harness):
    ini = harness.write_ini(harness.app_settings(**{"scheduler.timezone": "Nowhere/City"}))
    code, output = harness.run(ini=ini)
    assert code == EXIT_STARTUP_FAILED, output
    assert (
        "could not load the application from " in output
        and "Invalid setting scheduler.timezone = 'Nowhere/City'" in output
    )
    assert "Traceback" not in output


def test_the_start_up_line_names_broker_store_queues_and_role(make_harness):
    harness = make_harness(queues="jobs reports")
    proxy = harness.proxy()
    daemon = harness.start()
    harness.wait_active(proxy, daemon)
    settings = proxy.settings
    harness.wait_log(daemon, "running queues jobs, reports as a daemon (owner ")
    harness.wait_log(daemon, f"; broker {settings.broker.masked()}; job store {settings.jobstore_url}")


def test_sigterm_lets_the_running_job_finish_and_exits_0(harness):
    proxy = harness.proxy()
    daemon = harness.start(script=True)
    slow_id = tag("slow")
    proxy.add_async_job(jobs.slow, args=[harness.oracle, slow_id, 2], id=slow_id)
    wait_until(
        lambda: [run for run in harness.runs(slow_id) if run["phase"] == "start"],
        "the slow job to start",
        alive=(daemon,),
    )
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.log()
    assert [run["phase"] for run in harness.runs(slow_id)] == ["start", "end"]
    record = proxy.get_job(slow_id)
    assert record["status"] == "done" and record["result"] == slow_id
    assert "pscheduler stopped" in daemon.log()
    # It left: the queue has no live daemon.
    assert [d["active"] for d in proxy.get_daemons()] == [False]


def test_sigterm_cuts_runs_longer_than_shutdown_timeout(make_harness):
    harness = make_harness(shutdown_timeout="1")
    proxy = harness.proxy()
    daemon = harness.start()
    slow_id = harness.start_slow(proxy, daemon, 60)
    daemon.send(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.log()  # not the job's 60 s
    assert "stopped with 1 run(s) cut short" in daemon.log()
    assert [run["phase"] for run in harness.runs(slow_id)] == ["start"]
    successor = harness.start()
    record = harness.wait_job(proxy, slow_id, {"interrupted"}, alive=(successor,))
    assert "stopped before the run finished" in record["error"]


def test_reload_restarts_the_daemon_when_the_ini_file_changes(harness):
    proxy = harness.proxy()
    ini = harness.write_ini()
    daemon = harness.start("--reload", "--reload-interval", "0.2", ini=ini)
    harness.wait_log(daemon, "running queues")
    # hupper's monitor learns the watched paths from the worker asynchronously
    # and takes a file's first mtime when it first sees it: edit after that.
    time.sleep(2)
    with ini.open("a", encoding="utf-8") as f:
        f.write("\n# edited\n")
    wait_until(lambda: daemon.log().count("running queues") == 2, "the daemon to restart", alive=(daemon,))
    job_id = tag("after-reload")
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))
    (run,) = harness.runs(job_id)
    assert run["pid"] != daemon.pid  # hupper's worker process runs the jobs
    daemon.send(signal.SIGTERM)
    daemon.wait()
    assert "pscheduler stopped" in daemon.log()


def test_restart_option_restarts_a_crashed_daemon(harness):
    proxy = harness.proxy()
    supervisor = harness.start("--restart", "--restart-interval", "0.2", script=True)

    def child_pid() -> int | None:
        (queue,) = proxy.get_daemons()
        pids = [row["pid"] for row in queue["daemons"] if row["pid"] != supervisor.pid]
        return pids[-1] if pids else None

    first_child = wait_until(child_pid, "the supervised daemon to run the queue", alive=(supervisor,))
    os.kill(first_child, signal.SIGKILL)
    second_child = wait_until(
        lambda: (pid := child_pid()) != first_child and pid, "a restarted daemon to run the queue", alive=(supervisor,)
    )
    killed = f"pscheduler process 1 of 1 (pid {first_child}) was killed by SIGKILL; restarting in 0.2s"
    assert killed in supervisor.log()
    job_id = tag("after-restart")
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    harness.wait_job(proxy, job_id, {"done"}, alive=(supervisor,))
    assert [run["pid"] for run in harness.runs(job_id)] == [second_child]

    # SIGTERM to the supervisor is passed on; the daemon stops cleanly, no restart.
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait() == 0, supervisor.log()
    assert supervisor.log().count("restarting in") == 1
    with pytest.raises(ProcessLookupError):
        os.kill(second_child, 0)


def test_refused_combined_mode_starts_nothing(harness):
    proxy = harness.proxy()
    job_id = tag("waiting")
    proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    ini = harness.write_ini(harness.app_settings(**{"scheduler.combined": "true"}))
    code, output = harness.run(ini=ini)
    assert code == EXIT_COMBINED, output
    # A refusal must have no side effect: no scheduler started, no lease taken,
    # the waiting job neither taken from the broker nor run.
    assert [d["owner"] for d in proxy.get_daemons()] == [None]
    assert proxy.get_job(job_id) is None and harness.runs(job_id) == []
    assert "combined mode: running queues" not in output
    assert "running queues jobs" not in output
