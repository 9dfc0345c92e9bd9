import json
from datetime import datetime, timedelta, timezone
from functools import partial
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage, SerializationError
from pyramid_scheduler.triggers.build import build_trigger, to_datetime, trigger_spec
from pyramid_scheduler.wire.messages import JobRequest, check_json, decode
from pyramid_scheduler.wire.refs import callable_ref, resolve_ref

UTC = timezone.utc


def module_level(x):
    return x


class Holder:
    def method(self):
        return 1

    @classmethod
    def klass(cls):
        return 2


def test_module_level_function_round_trips():
    ref = callable_ref(module_level)
    assert ref == "test_messages:module_level"
    assert resolve_ref(ref) is module_level
    assert callable_ref("json:dumps") == "json:dumps"
    assert callable_ref(Holder.klass) == "test_messages:Holder.klass"


@pytest.mark.parametrize(
    "func, why",
    [
        (lambda: 1, "lambda"),
        (Holder().method, "bound method"),
        (partial(module_level, 1), "partial"),
        (42, "not callable"),
        ("json.dumps", "expected 'package.module:function'"),
        ("no_such_module_xyz:f", "cannot be imported"),
        ("json:no_such_attr", "has no attribute"),
    ],
)
def test_unreferencable_callables_are_refused_with_a_reason(func, why):
    with pytest.raises(InvalidJob, match=why):
        callable_ref(func)


def test_nested_function_is_refused():
    def inner():
        return None

    with pytest.raises(InvalidJob, match="nested function"):
        callable_ref(inner)


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


def test_times_naive_aware_epoch():
    paris = ZoneInfo("Europe/Paris")
    naive = datetime(2030, 1, 1, 12, 0)
    assert to_datetime(naive, paris, "date") == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
    aware = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert to_datetime(aware, paris, "date") == aware
    assert to_datetime(aware.timestamp(), paris, "date") == aware
    assert to_datetime("2030-01-01T12:00:00+00:00", paris, "date") == aware
    with pytest.raises(InvalidJob, match="date"):
        to_datetime("tomorrow", paris, "date")
    with pytest.raises(InvalidJob, match="date"):
        to_datetime(True, paris, "date")


def test_triggers_round_trip_through_the_wire():
    tz = ZoneInfo("UTC")
    when = datetime(2030, 5, 1, 8, 30, tzinfo=UTC)
    spec = json.loads(json.dumps(trigger_spec("date", tz, run_date=when)))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, DateTrigger) and trigger.run_date == when

    spec = json.loads(json.dumps(trigger_spec("interval", tz, start_date=when, minutes=2)))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.get_next_fire_time(None, when) == when

    spec = json.loads(json.dumps(trigger_spec("cron", tz, crontab="30 7 * * mon")))
    trigger = build_trigger(spec, tz)
    assert isinstance(trigger, CronTrigger)
    first = trigger.get_next_fire_time(None, when)
    assert (first.weekday(), first.hour, first.minute) == (0, 7, 30)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"type": "cron", "minute": "61"}, "cron trigger"),
        ({"type": "cron", "day_of_week": "funday"}, "cron trigger"),
        ({"type": "cron", "crontab": "* * *"}, "cron trigger"),
        ({"type": "interval"}, "add up to more than zero"),
        ({"type": "interval", "seconds": -1}, "seconds"),
        ({"type": "date", "run_date": "soon"}, "date"),
        ({"type": "weekly"}, "trigger type"),
    ],
)
def test_bad_triggers_fail_with_the_field(spec, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        build_trigger(spec, ZoneInfo("UTC"))


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
        (_add_body(options={"priority": 1}), "priority: unknown option"),
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


def test_epoch_and_offsets_survive_encoding():
    tz = ZoneInfo("America/New_York")
    when = datetime(2030, 3, 10, 1, 30, tzinfo=tz)
    spec = trigger_spec("date", tz, run_date=when)
    assert build_trigger(json.loads(json.dumps(spec)), ZoneInfo("UTC")).run_date == when
    assert spec["timezone"] == "America/New_York"
    assert timedelta(0) == build_trigger(spec, tz).run_date - when
