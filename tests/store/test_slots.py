"""The flow limits' rows (:mod:`pyramid_scheduler.store.slots`) on a real
SQLite file and on the real PostgreSQL: threads racing for a key's slots get
exactly *limit* of them, a dead daemon takes none and its slots are freed,
and racing reservations of a rate key are one sequence, spaced by the
interval -- with ``UPDATE ... RETURNING`` and with the conditional ``UPDATE``
of databases without it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from pyramid_scheduler.store.membership import Membership
from pyramid_scheduler.store.slots import Slots


def slots_of(ledger: Any) -> Slots:
    return Slots(ledger)


def race(count: int, call: Callable[[int], Any]) -> list[Any]:
    """*call(i)* for i in range(*count*), each in its own thread, released together."""
    results: list[Any] = [None] * count
    gate = threading.Barrier(count)

    def run(index: int) -> None:
        gate.wait()
        results[index] = call(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_racing_runs_get_exactly_the_limit_of_slots(ledger):
    slots = slots_of(ledger)
    got = race(8, lambda i: slots.take("tenant:a", 3, f"run-{i}", f"job-{i}", "d1", 1.0))
    assert sorted(got) == ["full"] * 5 + ["taken"] * 3
    assert slots.held("tenant:a") == 3
    winners = [f"run-{i}" for i, state in enumerate(got) if state == "taken"]
    assert slots.take("tenant:a", 3, winners[0], "job", "d1", 2.0) == "taken"  # it holds one already
    assert slots.held("tenant:a") == 3
    slots.release(winners[0])
    assert slots.take("tenant:a", 3, "late", "job-late", "d1", 3.0) == "taken"  # the freed slot
    assert slots.take("tenant:b", 1, "other-key", "job-b", "d1", 3.0) == "taken"  # keys apart


def test_a_dead_daemon_takes_no_slot_and_recovery_frees_its_slots(ledger):
    alive = Membership(ledger, ("jobs",), "otherhost:1:alive", ttl=3)
    dead = Membership(ledger, ("jobs",), "otherhost:2:dead", ttl=3)
    alive.join()
    dead.join()
    ledger.serve_as(alive.owner)  # the fence of every slot from now on
    slots = slots_of(ledger)
    assert slots.take("k", 2, "run-dead", "j1", dead.owner, 1.0) == "taken"
    assert slots.take("k", 2, "run-alive", "j2", alive.owner, 1.0) == "taken"
    dead.leave()  # declared dead
    assert slots.take("k2", 2, "run-late", "j3", dead.owner, 2.0) == "fenced"
    assert slots.free_dead({alive.owner}) == 1
    assert slots.held("k") == 1
    assert slots.held("k2") == 0


@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "conditional-update"])
def test_racing_reservations_are_one_spaced_sequence(ledger, returning):
    slots = slots_of(ledger)
    if not returning:  # as on a database without UPDATE ... RETURNING (MySQL)
        slots._build_without_returning()
    starts = race(10, lambda i: slots.reserve("api", 0.5, 100.0))
    assert sorted(starts) == [100.0 + 0.5 * n for n in range(10)]  # no start given twice, none lost
    assert slots.reserve("api", 0.5, 200.0) == 200.0  # past the last reservation: now
    assert slots.reserve("api", 0.5, 200.1) == 200.5


def test_a_hold_is_used_once(ledger):
    slots = slots_of(ledger)
    assert not slots.use_hold("j1")
    slots.hold("j1", "api", 5.0)
    slots.hold("j1", "api", 6.0)  # a second reservation replaces the first
    assert slots.use_hold("j1")
    assert not slots.use_hold("j1")
