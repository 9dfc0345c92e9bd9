"""Daylight saving changes on a live ``pscheduler`` whose clock is faked.

The daemon (the real ``pscheduler`` entry point, embedded SQLite default)
runs under libfaketime with its wall clock set some seconds before a change:
the autumn one (issue 23: jobs due in the repeated hour were not run until it
ended, then reported missed) and the spring one, in Europe/Paris (east of
UTC) and America/New_York (west). Its clock runs at the real pace, so the
test takes the few seconds around the change it looks at.

libfaketime 0.9.10 fakes ``CLOCK_MONOTONIC`` too by default, and CPython's
timed waits (``sem_clockwait`` on that clock) are not intercepted: a timed
wait then never ends. With ``FAKETIME_DONT_FAKE_MONOTONIC=1`` the waits are
real, but its ``clock_nanosleep`` then refuses CPython's monotonic deadline
(``time.sleep`` raises EINVAL); a small shim, built here and preloaded before
libfaketime, sends monotonic sleeps straight to the kernel. Only the wall
clock (``time.time``, ``datetime.now``) is faked, which is all the
scheduler reads to decide what is due.

Without libfaketime or a C compiler the tests skip with the reason (and fail
when ``CI=true``; ``.ci/run`` installs the ``faketime`` package).
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from conftest import IN_CI
from integration.conftest import wait_until
from integration.sampleapp import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UTC = timezone.utc

#: Sends monotonic sleeps to the kernel, past libfaketime (see the module).
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *request,
                    struct timespec *remain) {
    if (clock_id != CLOCK_REALTIME) {
        long rc = syscall(SYS_clock_nanosleep, clock_id, flags, request, remain);
        return rc == -1 ? errno : 0;
    }
    int (*next)(clockid_t, int, const struct timespec *, struct timespec *) =
        (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, request, remain);
}
"""

#: Seconds of faked time before the change when the daemon starts.
LEAD = 16
#: Seconds a run may start after its due time (generous: a loaded CI machine).
LATE = 4.0
#: A job every STEP seconds, aligned on the change.
STEP = 10


@pytest.fixture(scope="module")
def preload(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``LD_PRELOAD`` for a daemon with a faked wall clock."""
    libraries = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
        + glob.glob("/usr/lib/faketime/libfaketime.so.1")
        + glob.glob("/usr/local/lib/faketime/libfaketime.so.1")
    )
    compiler = shutil.which("cc") or shutil.which("gcc")
    reason = None
    if not libraries:
        reason = "libfaketime is not installed (Debian: apt-get install faketime)"
    elif compiler is None:
        reason = "no C compiler (cc) to build the sleep shim for libfaketime"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the DST tests on a live daemon must run)")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("faketime")
    source, shim = folder / "shim.c", folder / "shim.so"
    source.write_text(SHIM, encoding="utf-8")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True, capture_output=True
    )
    return f"{shim} {libraries[0]}"


def faked(preload: str, offset: int) -> dict[str, str]:
    """The environment of a process whose wall clock is *offset* seconds off."""
    return {
        "LD_PRELOAD": preload,
        "FAKETIME": f"{offset:+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def test_faked_clock_keeps_timed_waits_and_sleeps_real(preload, tmp_path):
    """The tool itself: the wall clock is off, waits and sleeps take real time."""
    code = (
        "import datetime, threading, time\n"
        "t = time.monotonic(); threading.Event().wait(0.2); time.sleep(0.2)\n"
        "print(datetime.datetime.now(datetime.timezone.utc).year, round(time.monotonic() - t, 1))\n"
    )
    offset = int(datetime(2031, 6, 1, tzinfo=UTC).timestamp() - time.time())
    env = {**faked(preload, offset), "PATH": "/usr/bin:/bin"}
    year, took = subprocess.run(
        [shutil.which("python3") or "python3", "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout.split()
    assert year == "2031"
    assert 0.4 <= float(took) < 10  # waited and slept, in real time (a timed wait used to hang)


CHANGES = [
    pytest.param("Europe/Paris", datetime(2026, 10, 25, 1, tzinfo=UTC), True, id="Paris-autumn"),
    pytest.param("America/New_York", datetime(2026, 11, 1, 6, tzinfo=UTC), True, id="NewYork-autumn"),
    pytest.param("Europe/Paris", datetime(2026, 3, 29, 1, tzinfo=UTC), False, id="Paris-spring"),
    pytest.param("America/New_York", datetime(2026, 3, 8, 7, tzinfo=UTC), False, id="NewYork-spring"),
]


@pytest.mark.parametrize(("zone", "change", "autumn"), CHANGES)
def test_jobs_run_at_their_times_through_a_dst_change(make_harness, preload, zone, change, autumn):
    """Interval, date, retry and cron jobs in ``scheduler.timezone``, added
    before the change and (as in issue 23) after it: in autumn, while the
    wall clock repeats its hour. Interval and date jobs and retries run at
    their instants; the cron job (every 10 s of the wall clock) runs on
    through spring's gap and not in autumn's second pass; nothing is
    reported missed."""
    tz = ZoneInfo(zone)
    harness = make_harness(timezone=zone)
    proxy = harness.proxy()
    offset = int((change - timedelta(seconds=LEAD)).timestamp() - time.time())
    daemon = harness.start(env=faked(preload, offset))
    daemon.wait_consuming(timeout=60)

    def fake_now() -> datetime:
        return datetime.fromtimestamp(time.time() + offset, UTC)

    def wait_for(when: datetime, what: str) -> None:
        wait_until(lambda: fake_now() > when, what, timeout=LEAD + 3 * STEP + 30, interval=0.2, alive=(daemon,))

    started = fake_now()
    if started > change - timedelta(seconds=7):
        pytest.skip(
            f"pscheduler took {LEAD - (change - started).total_seconds():.0f}s to start "
            "(a loaded machine): too late for the jobs due before the change"
        )
    tag = uuid.uuid4().hex[:6]
    ids = {kind: f"{kind}-{tag}" for kind in ("before", "after", "date", "retry-before", "retry-after", "cron")}
    grid = (change - timedelta(minutes=5)).astimezone(tz)  # every STEP seconds, aligned on the change
    proxy.add_interval_job(
        jobs.record, args=[harness.oracle, ids["before"]], id=ids["before"], seconds=STEP, start_date=grid
    )
    proxy.add_cron_job(jobs.record, args=[harness.oracle, ids["cron"]], id=ids["cron"], second=f"*/{STEP}")
    proxy.add_date_job(
        jobs.fail,
        change - timedelta(seconds=4),
        args=[harness.oracle, ids["retry-before"]],
        id=ids["retry-before"],
        retries=1,
        retry_delay=STEP,
    )
    wait_for(change + timedelta(seconds=1), "the faked clock to pass the change")
    proxy.add_interval_job(
        jobs.record, args=[harness.oracle, ids["after"]], id=ids["after"], seconds=STEP, start_date=grid
    )
    date_at = (change + timedelta(seconds=12.5)).astimezone(tz)
    assert date_at.fold == int(autumn)  # autumn: a wall time of the second pass
    proxy.add_date_job(jobs.record, date_at.isoformat(), args=[harness.oracle, ids["date"]], id=ids["date"])
    proxy.add_date_job(
        jobs.fail,
        change + timedelta(seconds=5),
        args=[harness.oracle, ids["retry-after"]],
        id=ids["retry-after"],
        retries=1,
        retry_delay=STEP,
    )
    until = change + timedelta(seconds=2 * STEP) + timedelta(seconds=LATE)
    wait_for(until, "the faked clock to pass the runs looked at")
    harness.wait_job(proxy, ids["date"], {"done"}, alive=(daemon,))
    for kind in ("retry-before", "retry-after"):
        harness.wait_job(proxy, ids[kind], {"failed"}, alive=(daemon,))

    def at(kind: str) -> list[datetime]:
        return [datetime.fromtimestamp(row["at"], UTC) for row in harness.runs(ids[kind])]

    def on_time(runs: list[datetime], due: list[datetime]) -> None:
        assert len(runs) == len(due), (runs, due)
        for ran, when in zip(runs, due, strict=True):
            assert timedelta(seconds=-0.1) <= ran - when <= timedelta(seconds=LATE), (ran, when)

    def steps(first: int, last: int) -> list[datetime]:
        return [change + i * timedelta(seconds=STEP) for i in range(first, last + 1)]

    # Interval jobs: each fire time from their first after they were added.
    before = [when for when in at("before") if when <= until]
    first = int((before[0] - change).total_seconds() // STEP) if before else 0
    assert first <= 0
    on_time(before, steps(first, 2))
    on_time([when for when in at("after") if when <= until], steps(1, 2))
    on_time(at("date"), [date_at.astimezone(UTC)])
    # Retries: the first run, then the retry STEP seconds after it failed.
    for kind, due in (("retry-before", change - timedelta(seconds=4)), ("retry-after", change + timedelta(seconds=5))):
        runs = at(kind)
        on_time(runs, [due, runs[0] + timedelta(seconds=STEP)])
    # Cron, every STEP s of the wall clock: on through the gap in spring; in
    # autumn nothing in the second pass (those wall times ran an hour ago).
    cron = [when for when in at("cron") if change - timedelta(seconds=STEP) <= when <= until]
    on_time(cron, steps(-1, -1) if autumn else steps(-1, 2))
    assert [event for event in harness.events() if event["type"] == "job.missed"] == []
    for kind in ("before", "after", "cron"):
        assert proxy.get_job(ids[kind])["status"] == "scheduled"
    assert " missed" not in daemon.log()
