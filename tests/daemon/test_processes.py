"""The supervisor's pieces that need no process: a child's place, how an
exit is told and the restart delays. The supervisor itself is tested on
real processes in tests/integration/test_processes.py."""

from __future__ import annotations

import signal

import pytest

from pyramid_scheduler.daemon.processes import MAX_BACKOFF, Child, Place, Supervisor, how_it_ended


def test_place_from_the_environment():
    assert Place.from_env({}) is None
    place = Place.from_env({"PSCHEDULER_PROCESS": "2/4", "PSCHEDULER_SUPERVISOR": "4240"})
    assert place == Place(2, 4, 4240)
    assert str(place) == "2/4"


@pytest.mark.parametrize(
    "code, told",
    [
        (0, "exited with code 0"),
        (20, "exited with code 20"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-99, "was killed by signal 99"),
    ],
)
def test_how_an_exit_is_told(code, told):
    assert how_it_ended(code) == told


def test_restarts_back_off_after_crashes_at_start():
    supervisor = Supervisor(["app.ini"], 2, restart_interval=5, stop_timeout=40, fatal_codes=())
    child = Child(1, 2)
    delays = []
    for crashes in range(1, 7):
        child.crashes = crashes
        delays.append(supervisor._backoff(child))
    assert delays == [5, 10, 20, 40, MAX_BACKOFF, MAX_BACKOFF]
    slow = Supervisor(["app.ini"], 1, restart_interval=90, stop_timeout=40, fatal_codes=())
    assert slow._backoff(child) == 90  # a longer interval is kept
