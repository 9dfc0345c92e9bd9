"""``replay_dead_letter``: a dead letter's message published again, once it is
checked as ``add_*_job`` checks a job; what cannot be replayed is refused with
why. The dead letters are written the way the daemon writes them (the ledger's
``dead_letter_many``) into a real SQLite job store; what is replayed is read
back from the SQL broker's table."""

import pytest

from producers import published
from pyramid_scheduler import InvalidJob
from pyramid_scheduler.wire.messages import JobRequest


def job(name):
    return name


def letter(scheduler, body, reason="refused", signed=None, whole=True):
    ledger = scheduler._ledger()
    text = body.decode() if whole else None
    ledger.dead_letter_many([("jobs", reason, body, text, signed)])
    return ledger.list_dead_letters(1)[-1]["id"]


def request(**fields):
    base = dict(op="add", id="replayed-job", queue="jobs", func="test_replay:job", args=["x"], kwargs={})
    base.update(trigger={"type": "now", "run_date": "2026-01-01T00:00:00+00:00"})
    return JobRequest(**{**base, **fields})


def test_a_replayed_message_is_published_again_and_forgotten(scheduler, tmp_path):
    original = request(sent_at="2020-01-01T00:00:00+00:00")
    letter_id = letter(scheduler, original.encode(), "sent too long ago")
    assert scheduler._ledger().list_dead_letters(5)[0]["replayable"] is True
    assert scheduler.replay_dead_letter(letter_id) == "replayed-job"
    [(queue, sent)] = published(tmp_path)
    assert queue == "pyramid_scheduler.jobs"
    # The same message (its id absorbs a second copy), sent again now.
    assert (sent.id, sent.mid, sent.func, sent.args) == (original.id, original.mid, original.func, original.args)
    assert sent.sent_at > original.sent_at
    assert scheduler._ledger().get_dead_letter(letter_id) is None
    with pytest.raises(LookupError, match=f"dead letter {letter_id}: no such dead letter"):
        scheduler.replay_dead_letter(letter_id)


def test_management_requests_replay_too(scheduler, tmp_path):
    letter_id = letter(scheduler, JobRequest(op="pause", id="nightly", queue="reports").encode())
    assert scheduler.replay_dead_letter(letter_id) == "nightly"
    assert [sent.op for _, sent in published(tmp_path)] == ["pause"]


@pytest.mark.parametrize(
    ("body", "whole", "fragment"),
    [
        (b"x" * 9000, False, "only the first bytes of its 9000-byte body were kept"),
        (b"\x1f\x8b compressed", False, "the daemon refused it before reading it as a message"),
        (b'{"v": 1, "op": "add"}', True, "is still not a valid message: field 'id' is missing"),
        (request(func="no_such_module_here:job").encode(), True, "no_such_module_here"),
        (request(args=["x", "y"]).encode(), True, "dead letter"),
        (request(queue="elsewhere").encode(), True, "its queue 'elsewhere' is not one of scheduler.queues"),
        (request(trigger={"type": "interval", "seconds": -1}).encode(), True, "seconds: expected a number"),
    ],
)
def test_what_cannot_be_replayed_is_refused_with_why(scheduler, tmp_path, body, whole, fragment):
    letter_id = letter(scheduler, body, whole=whole)
    with pytest.raises(InvalidJob, match=fragment):
        scheduler.replay_dead_letter(letter_id)
    assert published(tmp_path) == []
    assert scheduler._ledger().get_dead_letter(letter_id) is not None


def test_an_unsigned_message_needs_force(scheduler, tmp_path):
    letter_id = letter(scheduler, request().encode(), "bad signature", signed=False)
    with pytest.raises(InvalidJob, match="may not come from your application"):
        scheduler.replay_dead_letter(letter_id)
    assert published(tmp_path) == []
    assert scheduler.replay_dead_letter(letter_id, force=True) == "replayed-job"
    assert len(published(tmp_path)) == 1
