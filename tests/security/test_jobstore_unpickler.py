"""The job store's rows cannot run code (issue 16, item 1).

A row of ``<prefix>aps_<queue>`` is written by our daemon, but anyone with
write access to the database (an SQL injection elsewhere in the
application, a shared role) can change it. Loading it must never run code:
its pickle may name only the trigger and date/time classes, and its ``func``
must pass the door's rule (``scheduler.allowed_modules``, named where it is
defined). A refused row is parked with its reason, logged, and reported
with ``JOB_PARKED``; the daemon goes on with the other jobs.

The malicious rows are written with SQL into a real SQLite file and a real
PostgreSQL database, then loaded by a real ``pscheduler``; the payloads
would create marker files. A hypothesis fuzzer feeds arbitrary and crafted
pickles to the job store's loader.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_settings
from integration.conftest import make_harness, wait_until  # noqa: F401 - the fixture
from integration.sampleapp import jobs
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.jobstores import QueueJobStore
from pyramid_scheduler.store.ledger import Ledger
from pyramid_scheduler.store.tables import aps_tablename
from pyramid_scheduler.store.unpickle import JobUnpickler
from pyramid_scheduler.triggers.build import build_trigger
from pyramid_scheduler.wire.refs import check_ref
from security.pickles import TRIGGERS, Call, G, craft, function_payload, job_state


def unpickle(data: bytes):
    return JobUnpickler(io.BytesIO(data)).load()


# -- the unpickler alone --------------------------------------------------------------


def test_the_issue_payload_is_live_and_the_unpickler_refuses_it(tmp_path):
    live, refused = tmp_path / "live", tmp_path / "refused"
    pickle.loads(craft(function_payload(str(live))))  # plain pickle: the payload runs
    assert live.exists()
    with pytest.raises(pickle.UnpicklingError, match="dotted or private name"):
        unpickle(craft(function_payload(str(refused))))
    assert not refused.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (TRIGGERS, "convert_to_datetime.__class__"),
        (TRIGGERS, "convert_to_datetime.__code__.__class__"),
        (TRIGGERS, "convert_to_datetime"),  # a function under apscheduler.triggers
        (TRIGGERS, "datetime"),  # a type, but not where it is defined
        (TRIGGERS, "CronTrigger.__init__"),
        ("apscheduler.triggers.cron", "_private"),
        ("apscheduler.triggers.base", "BaseTrigger"),
        ("zoneinfo", "ZoneInfo._unpickle"),
        ("builtins", "eval"),
        ("builtins", "type"),
        ("os", "system"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("pyramid_scheduler.wire.refs", "resolve_ref"),
        ("datetime", "datetime.__class__"),
    ],
)
def test_every_other_global_is_refused(module, name):
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        unpickle(craft({"trigger": G(module, name)}))


def test_getattr_serves_only_zoneinfo(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        unpickle(craft(Call(G("builtins", "getattr"), Call(G("datetime", "timedelta")), "max")))


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "date", "run_date": "2030-01-01T00:00:00+00:00", "timezone": "UTC"},
        {"type": "now", "run_date": "2030-01-01T00:00:00+02:00", "timezone": "Europe/Paris"},
        {
            "type": "interval",
            "minutes": 2,
            "jitter": 3,
            "timezone": "America/New_York",
            "start_date": "2030-01-01T00:00:00",
            "end_date": "2031-01-01T00:00:00",
        },
        {"type": "cron", "crontab": "30 7 * * mon", "timezone": "Asia/Tokyo"},
        {
            "type": "cron",
            "day": "2nd fri",
            "month": "jan-mar",
            "day_of_week": "mon-fri",
            "week": "1-5/2",
            "hour": "*/3",
            "year": "2030",
            "timezone": "UTC",
        },
        {"type": "cron", "day": "last", "minute": "1,2,5", "timezone": "UTC"},
        {"type": "cron", "day": "last fri", "second": "*", "timezone": "UTC"},
    ],
    ids=lambda spec: spec["type"] + ":" + ",".join(sorted(spec)),
)
def test_every_trigger_we_store_loads(spec):
    trigger = build_trigger(spec, ZoneInfo("UTC"))
    for tz in (timezone.utc, timezone(timedelta(hours=2)), ZoneInfo("Europe/Paris")):
        state = job_state("j", "integration.sampleapp.jobs:record", next_run_time=datetime.now(tz), trigger=trigger)
        loaded = unpickle(pickle.dumps(state, pickle.HIGHEST_PROTOCOL))
        assert loaded["trigger"].__getstate__() == trigger.__getstate__()
        assert loaded["next_run_time"] == state["next_run_time"]


def test_a_cron_trigger_pickled_under_its_old_module_still_loads():
    """Rows written before the subpackages name ``pyramid_scheduler.catchup``."""
    trigger = build_trigger({"type": "cron", "hour": "3", "timezone": "Europe/Paris"}, ZoneInfo("UTC"))
    state = job_state(
        "j", "integration.sampleapp.jobs:record", next_run_time=datetime.now(timezone.utc), trigger=trigger
    )
    data = pickle.dumps(state, 3, fix_imports=False)  # protocol 3 names a global as text, unframed
    new, old = b"pyramid_scheduler.triggers.cron\n", b"pyramid_scheduler.catchup\n"
    assert new in data
    old_data = data.replace(new, old)
    assert old_data != data
    loaded = unpickle(old_data)
    assert type(loaded["trigger"]) is type(trigger)
    assert loaded["trigger"].__getstate__() == trigger.__getstate__()


# -- a real pscheduler loading crafted rows -------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_crafted_rows_are_parked_with_their_reason_and_run_nothing(make_harness, tmp_path, store):  # noqa: F811
    harness = make_harness(store=store)
    proxy = harness.proxy()
    prefix = harness.settings["scheduler.jobstore.tablename_prefix"]
    table = aps_tablename(prefix, "jobs")
    markers = {name: tmp_path / f"pwned-{name}" for name in ("pickle", "rogue", "system", "chain")}
    tag = uuid.uuid4().hex[:6]
    ids = {name: f"{name}-{tag}" for name in ("pickle", "system", "chain")}

    first = harness.start()
    for job_id in ids.values():  # real jobs, due in an hour: their rows are then rewritten
        proxy.add_date_job(
            jobs.record, date=datetime.now(timezone.utc) + timedelta(hours=1), args=[harness.oracle, job_id], id=job_id
        )
    for job_id in ids.values():
        harness.wait_job(proxy, job_id, {"scheduled"}, alive=(first,))
    assert first.terminate() == 0

    states = {
        ids["pickle"]: craft(function_payload(str(markers["pickle"]))),
        # A well-formed state naming a function outside scheduler.allowed_modules...
        ids["system"]: pickle.dumps(job_state(ids["system"], "os:system", (f"touch {markers['system']}",))),
        # ...and one reaching os.system through an allowed module that imports os.
        ids["chain"]: pickle.dumps(
            job_state(ids["chain"], "integration.sampleapp.jobs:os.system", (f"touch {markers['chain']}",))
        ),
    }
    rogue = f"rogue-{tag}"  # a row with no ledger record at all
    engine = sa.create_engine(harness.settings["scheduler.jobstore.url"])
    try:
        with engine.begin() as conn:
            for job_id, state in states.items():
                conn.execute(
                    sa.text(f'UPDATE "{table}" SET job_state = :state, next_run_time = :now WHERE id = :id'),
                    {"state": state, "now": 0.0, "id": job_id},
                )
            conn.execute(
                sa.text(f'INSERT INTO "{table}" (id, next_run_time, job_state) VALUES (:id, :now, :state)'),
                {"id": rogue, "now": 0.0, "state": craft(function_payload(str(markers["rogue"])))},
            )
    finally:
        engine.dispose()

    second = harness.start()
    records = {name: harness.wait_job(proxy, job_id, {"parked"}, alive=(second,)) for name, job_id in ids.items()}
    assert "refusing" in records["pickle"]["error"] and "dotted or private" in records["pickle"]["error"]
    assert "not in scheduler.allowed_modules" in records["system"]["error"]
    assert "must be named where it is defined" in records["chain"]["error"]
    for job_id in ids.values():
        wait_until(
            lambda job_id=job_id: "job.parked" in [e["type"] for e in harness.events(job_id)],
            f"JOB_PARKED of {job_id}",
            alive=(second,),
        )
        harness.wait_log(second, f"job {job_id} (queue jobs) parked: ")
    harness.wait_log(second, f"job {rogue} (queue jobs) parked: cannot load the stored job: UnpicklingError")

    # The daemon is still up and runs legitimate work.
    proxy.add_async_job(jobs.record, args=[harness.oracle, f"after-{tag}"])
    harness.wait_runs(f"after-{tag}", alive=(second,))
    assert [path for path in markers.values() if path.exists()] == []
    assert harness.runs(ids["pickle"]) == harness.runs(ids["system"]) == harness.runs(ids["chain"]) == []
    assert second.terminate() == 0


# -- the loader under arbitrary input -------------------------------------------------

#: Audit events no job-store load may raise (see sys.addaudithook).
DANGEROUS = (
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.kill",
    "os.remove",
    "os.rename",
    "os.mkdir",
    "subprocess.Popen",
    "exec",
    "compile",
    "code.__new__",
    "function.__new__",
    "ctypes.",
    "socket.",
    "shutil.",
    "builtins.input",
    "pty.",
    "webbrowser.",
)
_WATCH: list[str] = []
_WATCHING = [False]


def _audit(event, args):
    if _WATCHING[0] and event.startswith(DANGEROUS):
        _WATCH.append(event)


sys.addaudithook(_audit)

SUSPECTS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("subprocess", "getoutput"),
    (TRIGGERS, "convert_to_datetime.__class__"),
    (TRIGGERS, "convert_to_datetime.__globals__"),
    (TRIGGERS, "convert_to_datetime"),
    ("apscheduler.triggers.date", "DateTrigger"),
    ("datetime", "datetime"),
    ("datetime", "timedelta"),
    ("zoneinfo", "ZoneInfo"),
    ("apscheduler.triggers.interval", "IntervalTrigger.__init__"),
    ("copyreg", "_reconstructor"),
    ("pyramid_scheduler.triggers.cron", "WallClockCronTrigger"),
    ("types", "FunctionType"),
]
FUNCS = [
    "os:system",
    "subprocess:getoutput",
    "integration.sampleapp.jobs:os.system",
    "integration.sampleapp.jobs:record",
    "integration.sampleapp.jobs:noop",
    "builtins:eval",
    "integration.sampleapp:jobs.record",
    "integration.sampleapp.jobs:record.__call__",
    "x",
    "",
]

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4) | st.tuples(inner, inner)
    ),
    max_leaves=12,
)
globals_ = st.sampled_from(SUSPECTS).map(lambda pair: G(*pair)) | st.builds(
    G, st.text(max_size=30), st.text(max_size=30)
)
calls = st.builds(lambda func, args: Call(func, *args), globals_, st.lists(plain | globals_, max_size=3))
crafted = st.recursive(
    plain | globals_ | calls,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["func", "trigger", "args", "id", "x"]), inner, max_size=4)
        | st.builds(lambda func, args: Call(func, *args), globals_, st.lists(inner, max_size=2))
    ),
    max_leaves=8,
).map(craft)
states = st.builds(
    lambda func, args: pickle.dumps(job_state("fuzz", func, tuple(args))),
    st.sampled_from(FUNCS) | st.text(max_size=40),
    st.lists(plain, max_size=2),
)
rows = st.binary(max_size=300) | crafted | states | crafted.map(lambda data: data[: len(data) // 2])


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    var = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(var)
    ledger = Ledger(
        create_db_engine(settings_["scheduler.jobstore.url"]), settings_["scheduler.jobstore.tablename_prefix"]
    )
    store = QueueJobStore(ledger, "jobs", aps_tablename(ledger.prefix, "jobs"), allowed=("integration.sampleapp",))
    store.start(BackgroundScheduler(), "jobs")
    yield store
    store.shutdown()


@settings(
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "150")) * 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(row=rows)
def test_no_row_runs_anything_or_breaks_the_loader(fuzz_store, tmp_path, row):
    store = fuzz_store
    with store.engine.begin() as conn:
        conn.execute(store.jobs_t.delete())
        conn.execute(store.jobs_t.insert().values(id="fuzz", next_run_time=0.0, job_state=row))
    store.lookup_job("warm-up")  # SQLAlchemy's own first-use work is not the row's
    _WATCH.clear()
    _WATCHING[0] = True
    try:
        job = store.lookup_job("fuzz")  # never raises: a refusal parks the row
        due = store.get_due_jobs(datetime.now(timezone.utc))
    finally:
        _WATCHING[0] = False
    assert _WATCH == []
    if job is None:  # refused: parked, kept, no longer due
        assert due == []
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(store.jobs_t.c.next_run_time)).scalar_one() is None
    else:  # loaded: only what the door would have let through
        assert check_ref(job.func_ref, store.allowed) is job.func
    assert not list(Path(tmp_path).iterdir())
