import json
from datetime import datetime, timezone

import pytest

from pyramid_scheduler.exceptions import InvalidMessage, SerializationError
from pyramid_scheduler.wire.messages import MAX_DEPTH, JobRequest, check_json, decode

UTC = timezone.utc


def test_check_json_names_the_bad_item():
    assert check_json([1, (2, 3), {"a": None}], "args") == [1, [2, 3], {"a": None}]
    with pytest.raises(SerializationError, match=r"kwargs\['when'\]: datetime .*isoformat"):
        check_json({"when": datetime.now()}, "kwargs")
    with pytest.raises(SerializationError, match=r"args\[0\]: key 1"):
        check_json([{1: "x"}], "args")
    with pytest.raises(SerializationError, match="nan"):
        check_json([float("nan")], "args")
    deep: list = []
    node = deep
    for _ in range(50):
        node.append([])
        node = node[0]
    with pytest.raises(SerializationError, match="deeper"):
        check_json(deep, "args")


def _add_body(**changes):
    body = JobRequest(
        op="add",
        id="j1",
        queue="jobs",
        func="json:dumps",
        args=[1],
        kwargs={},
        trigger={"type": "now", "run_date": datetime.now(UTC).isoformat()},
    ).to_wire()
    body.update(changes)
    return body


def test_decode_accepts_what_the_producer_sends():
    body = _add_body()
    request = decode(json.dumps(body).encode())
    assert request.op == "add" and request.id == "j1" and request.func == "json:dumps"
    cancel = decode(JobRequest(op="cancel", id="j1", queue="jobs").encode())
    assert cancel.op == "cancel"


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (_add_body(v=2), "unknown wire format version"),
        (_add_body(v=True), "unknown wire format version"),
        (_add_body(op="explode"), "unknown op"),
        ({k: v for k, v in _add_body().items() if k != "func"}, "'func' is missing"),
        (_add_body(args="x"), "'args' has type str"),
        (_add_body(func="os.system"), "module:qualname"),
        (_add_body(trigger={"type": "sometimes"}), "unknown trigger type"),
        (_add_body(options={"urgency": 1}), "urgency: unknown option"),
        (_add_body(options={"max_instances": "3"}), "max_instances: expected int, got '3'"),
        (_add_body(id=""), "'id' must be"),
        (_add_body(id="x" * 201), "'id' must be 1 to 200"),
        (_add_body(mid="m" * 65), "'mid' must be 1 to 64"),
        (_add_body(queue="q" * 201), "'queue' must be 1 to 200"),
        (_add_body(id="a\nb"), "field 'id': 'a\\\\nb' holds a control character"),
        (_add_body(id="nul\x00"), "field 'id'.*control character"),
        (_add_body(queue="jobs\r"), "field 'queue'.*control character"),
        ({"v": 1, "op": "cancel", "mid": "m", "id": "x\u2028y", "queue": "jobs"}, "field 'id'.*control"),
        (_add_body(func="a:" + "b" * 500), "'func' must be at most 500"),
        (_add_body(options={"misfire_grace_time": 0.5}), "misfire_grace_time: expected int or None, got 0.5"),
        (_add_body(options={"misfire_grace_time": 0}), "misfire_grace_time: expected 1 or more, got 0"),
        (_add_body(options={"max_instances": 0}), "max_instances: expected 1 or more, got 0"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
    ],
)
def test_decode_refuses_malformed_messages(body, fragment):
    with pytest.raises(InvalidMessage, match=fragment):
        decode(body if isinstance(body, bytes) else json.dumps(body).encode())


def body_of(**fields):
    return json.dumps(_add_body(**fields)).encode()


def nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def test_the_producers_nesting_limit_is_enforced_at_the_door():
    decode(body_of(args=[nested(MAX_DEPTH - 1)]))  # what the producer sends at most
    check_json([nested(MAX_DEPTH - 1)], "args")
    with pytest.raises(SerializationError):
        check_json([nested(MAX_DEPTH)], "args")
    with pytest.raises(InvalidMessage, match="nested deeper"):
        decode(body_of(args=[nested(MAX_DEPTH)]))
    with pytest.raises(InvalidMessage, match="nested deeper"):
        decode(body_of(kwargs={"a": json.loads('{"b":' * 40 + "1" + "}" * 40)}))
    with pytest.raises(InvalidMessage):
        decode(b'{"v":1,"args":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_management_requests_round_trip_on_the_wire():
    trigger = {"type": "cron", "timezone": "UTC", "crontab": "0 3 * * *"}
    for op in ("pause", "resume", "run_now"):
        request = decode(JobRequest(op=op, id="j1", queue="jobs").encode())
        assert (request.op, request.id, request.queue, request.trigger) == (op, "j1", "jobs", None)
    request = decode(JobRequest(op="reschedule", id="j1", queue="jobs", trigger=trigger).encode())
    assert request.trigger == trigger
    with pytest.raises(InvalidMessage, match="field .trigger. has type NoneType"):
        decode(JobRequest(op="reschedule", id="j1", queue="jobs").encode())
    with pytest.raises(InvalidMessage, match="unknown trigger type 'weekly'"):
        decode(JobRequest(op="reschedule", id="j1", queue="jobs", trigger={"type": "weekly"}).encode())
