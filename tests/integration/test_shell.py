"""Shell-command jobs (:mod:`pyramid_scheduler.shell`) run by a real
``pscheduler``: real processes, their output and exit code in the job's
record, a timeout that kills the command's whole process group, and a command
the daemon's ``scheduler.shell.allowed`` refuses at its door or as the run
starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from integration.conftest import wait_until
from pyramid_scheduler import InvalidJob, shell

pytestmark = [pytest.mark.integration]

#: What the daemons and the web side of these tests may run.
ALLOWED = "echo\n  sh -c *"
MODULES = "integration.sampleapp pyramid_scheduler.shell"


def job_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def gone(pid: int) -> bool:
    """True if process *pid* no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_commands_run_with_their_output_exit_code_and_timeout(make_harness, tmp_path: Path):
    harness = make_harness(allowed_modules=MODULES, **{"shell.allowed": ALLOWED})
    proxy = harness.proxy()
    daemon = harness.start()

    # A value holding blanks and a semicolon stays one argument.
    echo = proxy.add_async_job(shell.run, args=["echo {who} {n}"], kwargs={"format": {"who": "a b; c", "n": 3}})
    args = proxy.add_async_job(
        shell.run, args=['sh -c \'printf "[%s]" "$@"\' sh {one}'], kwargs={"format": {"one": "x y; echo z"}}
    )
    failing = proxy.add_async_job(shell.run, args=["sh -c 'echo to-stderr >&2; exit 3'"])
    marker = tmp_path / "background.pid"
    hanging = proxy.add_async_job(
        shell.run, args=[f"sh -c 'sleep 30 & echo $! > {marker}; sleep 30'"], kwargs={"timeout": 1}
    )

    done = harness.wait_job(proxy, echo, {"done"}, alive=(daemon,))
    assert done["result"]["stdout"] == "a b; c 3\n"
    assert (done["result"]["exit_code"], done["result"]["stderr"]) == (0, "")
    assert harness.wait_job(proxy, args, {"done"}, alive=(daemon,))["result"]["stdout"] == "[x y; echo z]"

    failed = harness.wait_job(proxy, failing, {"failed"}, alive=(daemon,))
    assert "exited with code 3" in failed["error"] and "to-stderr" in failed["error"]

    timed_out = harness.wait_job(proxy, hanging, {"failed"}, alive=(daemon,))
    assert "timed out after 1 s" in timed_out["error"]
    # The sleep started in the background was in the command's process group: killed too.
    background = int(marker.read_text())
    wait_until(lambda: gone(background), f"the background sleep {background} to be killed")


def test_a_refused_command_is_refused_by_add_job_and_at_the_door(make_harness):
    harness = make_harness(allowed_modules=MODULES, **{"shell.allowed": "echo"})
    proxy = harness.proxy()
    with pytest.raises(InvalidJob, match=r"'rm -rf /tmp/x' is refused: scheduler.shell.allowed"):
        proxy.add_async_job(shell.run, args=["rm -rf /tmp/x"])
    # A producer allowed more than the daemon (another application, an
    # older INI): the daemon's own list decides, at its door.
    lax = harness.proxy(**{"scheduler.shell.allowed": "echo\n  touch"})
    daemon = harness.start()
    refused = lax.add_async_job(shell.run, args=["touch /tmp/never"])
    allowed = lax.add_async_job(shell.run, args=["echo fine"])
    assert harness.wait_job(proxy, allowed, {"done"}, alive=(daemon,))["result"]["stdout"] == "fine\n"

    def letter():
        letters = proxy._ledger().list_dead_letters(10)
        return next((row for row in letters if refused in row["body"]), None)

    row = wait_until(letter, "the refused command's dead letter", alive=(daemon,))
    assert "'touch /tmp/never' is refused: scheduler.shell.allowed" in row["reason"]
    assert proxy.get_job(refused) is None


def test_a_stored_command_no_longer_allowed_fails_as_its_run_starts(make_harness, tmp_path: Path):
    harness = make_harness(allowed_modules=MODULES, **{"shell.allowed": "echo\n  touch"})
    proxy = harness.proxy()
    daemon = harness.start()
    target = tmp_path / "touched"
    later = proxy.add_date_job(shell.run, minutes=10, args=[f"touch {target}"])
    harness.wait_job(proxy, later, {"scheduled"}, alive=(daemon,))
    daemon.terminate()
    # Restarted with a narrower list; the stored job is run now.
    narrow = harness.start(ini=harness.write_ini(harness.app_settings(**{"scheduler.shell.allowed": "echo"})))
    harness.wait_active(proxy, narrow)
    proxy.run_job_now(later)
    failed = harness.wait_job(proxy, later, {"failed"}, alive=(narrow,))
    assert "is refused: scheduler.shell.allowed allows no such command" in failed["error"]
    assert not target.exists()


def test_a_shell_job_canceled_or_past_its_timeout_option_is_killed(make_harness, tmp_path: Path):
    """A shell job is process-isolated, so it is stopped for real: canceled
    while it runs, or past the job's ``timeout=`` option, its command's
    process group is killed and the run ends ``stopped`` or ``timed-out``."""
    harness = make_harness(allowed_modules=MODULES, **{"shell.allowed": ALLOWED})
    proxy = harness.proxy()
    daemon = harness.start()
    canceled_pid, timed_pid = tmp_path / "canceled.pid", tmp_path / "timed.pid"
    canceled = proxy.add_async_job(shell.run, args=[f"sh -c 'echo $$ > {canceled_pid}; sleep 60; echo late'"])
    timed = proxy.add_async_job(shell.run, args=[f"sh -c 'echo $$ > {timed_pid}; sleep 60; echo late'"], timeout=1)

    pid = int(wait_until(lambda: canceled_pid.exists() and canceled_pid.read_text().strip(), "the command to start"))
    proxy.cancel_job(canceled)
    harness.wait_job(proxy, canceled, {"canceled"}, alive=(daemon,))
    wait_until(lambda: gone(pid), f"the canceled command {pid} to be killed")
    wait_until(lambda: [run["status"] for run in proxy.get_runs(canceled)] == ["stopped"], "the run recorded stopped")

    record = harness.wait_job(proxy, timed, {"failed"}, alive=(daemon,))
    assert [run["status"] for run in proxy.get_runs(timed)] == ["timed-out"]
    assert "late" not in str(record["result"])
    pid = int(timed_pid.read_text())
    wait_until(lambda: gone(pid), f"the timed-out command {pid} to be killed")
