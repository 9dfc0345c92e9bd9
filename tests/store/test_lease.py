"""The lease (:mod:`pyramid_scheduler.store.lease`): one holder per queue,
taken over once expired, renewed, lost -- on a real SQLite file and the real
PostgreSQL, with the lease's clock stepped by hand."""

import socket
import subprocess
import sys

import pytest

from pyramid_scheduler.store import lease as lease_module
from pyramid_scheduler.store.lease import Lease


@pytest.fixture
def clock(monkeypatch):
    """The lease's clock, at 1000.0 until moved (``clock[0] += seconds``)."""
    clock = [1000.0]
    monkeypatch.setattr(lease_module, "now", lambda: clock[0])
    return clock


def test_two_owners_one_holder_and_the_other_takes_over_once_it_expired(ledger, clock):
    first = Lease(ledger, ("a", "b"), "host:1:first", ttl=30)
    second = Lease(ledger, ("b", "c"), "host:1:second", ttl=30)
    assert first.try_acquire() and first.valid()
    assert not second.try_acquire()  # b is held: second takes none of its queues
    assert second.epochs is None
    assert [(row["queue"], row["owner"]) for row in ledger.list_leases()] == [
        ("a", "host:1:first"),
        ("b", "host:1:first"),
    ]
    clock[0] += 31
    assert not first.valid()  # past its ttl, it knows it (fencing) ...
    assert second.try_acquire()  # ... and the other takes over, with a new epoch on b
    assert second.epochs == {"b": 2, "c": 1}
    assert not first.renew()  # the old holder finds it lost
    assert {row["queue"]: row["owner"] for row in ledger.list_leases()} == {
        "a": "host:1:first",
        "b": "host:1:second",
        "c": "host:1:second",
    }


def test_renewal_keeps_the_lease_past_its_first_ttl(ledger, clock):
    holder = Lease(ledger, ("jobs",), "host:1:holder", ttl=30)
    other = Lease(ledger, ("jobs",), "host:1:other", ttl=30)
    assert holder.try_acquire()
    for _ in range(4):
        clock[0] += 20
        assert holder.renew() and holder.valid()
        assert not other.try_acquire()
    assert holder.fresh()
    clock[0] += 21  # within its ttl, but not a third of it to spare
    assert holder.valid() and not holder.fresh()
    assert holder.try_acquire()  # its own lease again: same epoch
    assert holder.epochs == {"jobs": 1}


def test_a_lease_released_is_taken_at_once(ledger, clock):
    holder = Lease(ledger, ("jobs",), "host:1:holder", ttl=30)
    other = Lease(ledger, ("jobs",), "host:1:other", ttl=30)
    assert holder.try_acquire()
    holder.release()
    assert not holder.valid() and not holder.renew()
    assert other.try_acquire() and other.epochs == {"jobs": 2}


def test_a_lost_lease_is_not_renewed_and_a_changed_epoch_is_seen(ledger, clock):
    holder = Lease(ledger, ("jobs",), "host:1:holder", ttl=30)
    assert holder.try_acquire()
    with ledger.engine.begin() as conn:  # as when another daemon took it over and back
        conn.execute(ledger.leases.update().values(epoch=ledger.leases.c.epoch + 1))
    assert not holder.renew()
    assert holder.valid()  # until its ttl: the daemon stops at the failed renewal
    clock[0] += 31
    assert not holder.valid()


def test_the_lease_of_a_dead_process_on_this_host_is_taken_at_once(ledger, clock):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = socket.gethostname()
    assert Lease(ledger, ("jobs",), f"{host}:{dead.stdout.strip()}:gone", ttl=60).try_acquire()
    restarted = Lease(ledger, ("jobs",), f"{host}:{dead.stdout.strip()}:again", ttl=60)
    assert restarted.try_acquire()  # no 60 s wait: the holder's process is gone
    restarted.release()
    alive = Lease(ledger, ("jobs",), f"{host}:1:init", ttl=60)
    assert alive.try_acquire()
    assert not restarted.try_acquire()  # pid 1 is alive: wait for expiry
    other_host = Lease(ledger, ("jobs",), "elsewhere:1:x", ttl=60)
    clock[0] += 61
    assert other_host.try_acquire()
