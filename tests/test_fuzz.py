"""Property tests (hypothesis) of the two doors: the daemon's message decoder,
and ``add_*_job``, whose checks must be the daemon's.

* Whatever bytes arrive, :func:`decode` returns a request or raises
  :class:`InvalidMessage`; nothing else escapes it.
* Whatever a caller passes, ``add_*_job`` either refuses it with
  :class:`InvalidJob` (naming what is wrong) before anything is sent, or the
  message it sends is decoded and stored by a real engine without error:
  never accepted in the view and then refused by the daemon.

``HYPOTHESIS_EXAMPLES`` (default 150) sets the examples per property.
"""

import base64
import json
import os
import string
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator

from conftest import make_settings
from pyramid_scheduler import InvalidJob
from pyramid_scheduler.brokers.sql import messages as messages_table
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.exceptions import InvalidMessage
from pyramid_scheduler.wire.messages import JobRequest, decode

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def noop(*args, **kwargs):
    return None


# -- the decoder ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _valid_body():
    return JobRequest(
        op="add",
        id="j1",
        queue="jobs",
        func="test_fuzz:noop",
        args=[1],
        trigger={"type": "now", "run_date": datetime.now(timezone.utc).isoformat()},
    ).to_wire()


@FUZZ
@given(st.binary(max_size=2000))
def test_decoder_takes_any_bytes(body):
    try:
        decode(body)
    except InvalidMessage:
        pass


@FUZZ
@given(st.sampled_from(sorted(_valid_body())), json_values)
def test_decoder_takes_any_value_in_any_field(field, value):
    body = _valid_body()
    body[field] = value
    try:
        request = decode(json.dumps(body).encode())
    except InvalidMessage as exc:
        assert str(exc)
        return
    assert request.op in ("add", "cancel", "message")


# -- add_*_job: refused in the view, or stored by the daemon ---------------------------


def times():
    now = datetime.now(timezone.utc)
    return st.one_of(
        st.none(),
        st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
        st.datetimes(
            min_value=datetime(1970, 1, 2),
            max_value=datetime(2200, 1, 1),
            timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30))]),
        ),
        st.floats(min_value=-1e12, max_value=1e12),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.just(now + timedelta(minutes=5)),
        st.just((now + timedelta(days=1)).isoformat()),
        st.text(max_size=25),
    )


numbers = st.one_of(
    st.integers(min_value=0, max_value=1000),
    st.floats(min_value=0, max_value=1e4),
    st.integers(min_value=-5, max_value=10**9),
    st.floats(),
    st.none(),
    st.text(max_size=3),
)
cron_fields = st.one_of(
    st.none(),
    st.integers(min_value=-3, max_value=100),
    st.sampled_from(["*", "*/5", "1-3", "mon-fri", "last", "1,2", "xyz", "99", ""]),
    st.text(alphabet=string.digits + "*/-,", max_size=6),
)
any_options = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=210),
        "name": st.one_of(st.text(max_size=10), st.integers()),
        "misfire_grace_time": st.one_of(st.none(), st.integers(min_value=-2, max_value=10**6), st.floats()),
        "coalesce": st.one_of(st.booleans(), st.integers(0, 2)),
        "max_instances": st.one_of(st.integers(min_value=-1, max_value=5), st.text(max_size=2)),
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Nowhere/Land", ""]),
        "jitter": st.one_of(st.none(), st.integers(min_value=-5, max_value=100), st.text(max_size=3)),
        "retries": st.one_of(st.integers(min_value=-1, max_value=3), st.booleans(), st.floats()),
        "retry_delay": numbers,
        "retry_backoff": numbers,
        "retry_max_delay": numbers,
        "ttl": numbers,
    },
)
options = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.text(min_size=1, max_size=50),
            "misfire_grace_time": st.integers(1, 3600),
            "coalesce": st.booleans(),
            "timezone": st.sampled_from(["UTC", "Europe/Paris"]),
        },
    ),
    any_options,
)
calls = st.one_of(
    st.tuples(st.just("add_async_job"), st.fixed_dictionaries({}), options),
    st.tuples(st.just("add_date_job"), st.fixed_dictionaries({"date": times()}), options),
    st.tuples(
        st.just("add_interval_job"),
        st.fixed_dictionaries(
            {"start_date": times()},
            optional={
                "weeks": numbers,
                "days": numbers,
                "hours": numbers,
                "minutes": numbers,
                "seconds": numbers,
                "end_date": times(),
            },
        ),
        options,
    ),
    st.tuples(
        st.just("add_cron_job"),
        st.fixed_dictionaries(
            {"start_date": times()},
            optional={
                "minute": cron_fields,
                "hour": cron_fields,
                "day": cron_fields,
                "day_of_week": cron_fields,
                "month": cron_fields,
                "end_date": times(),
            },
        ),
        options,
    ),
    st.tuples(
        st.just("add_cron_job"),
        st.fixed_dictionaries(
            {
                "crontab": st.one_of(
                    st.sampled_from(["30 7 * * mon", "*/5 * * * *", "0 0 1 1 *", "* * *", "61 * * * *"]),
                    st.text(alphabet=string.digits + "*/-, ", max_size=14),
                )
            }
        ),
        options,
    ),
)


@pytest.fixture
def door(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    app_settings = make_settings(var, **{"misfire_grace_time": "60"})
    with Configurator(settings=app_settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    engine = Engine(proxy)
    engine.join()
    engine.start()
    broker = sa.create_engine(app_settings["scheduler.broker.url"])
    yield proxy, engine, broker
    engine.stop(timeout=2)
    broker.dispose()
    proxy.close()


def last_published(broker):
    if not sa.inspect(broker).has_table(messages_table.name):
        return None  # nothing was ever sent
    with broker.connect() as conn:
        row = conn.execute(sa.select(messages_table.c.payload).order_by(messages_table.c.id.desc()).limit(1)).first()
    return None if row is None else base64.b64decode(json.loads(row.payload)["body"])


@FUZZ
@given(call=calls, data=st.data())
def test_what_add_accepts_the_daemon_stores(door, call, data):
    proxy, engine, broker = door
    method, arguments, extra = call
    arguments = {**arguments, **extra}
    before = last_published(broker)
    try:
        job_id = getattr(proxy, method)(noop, args=[data.draw(st.integers(), label="arg")], **arguments)
    except InvalidJob as exc:
        event(f"{method}: refused")
        assert str(exc), "an error must say what is wrong"
        assert last_published(broker) == before, "a refused job must send nothing"
        return
    body = last_published(broker)
    assert body is not None and body != before
    request = decode(body)
    assert request.id == job_id
    event(f"{method}: accepted")
    outcome = engine.submit(request)  # raises if the daemon refuses what the view accepted
    assert outcome in ("stored", "duplicate")
