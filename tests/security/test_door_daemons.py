"""The attacks of issue 16 (items 3, 4 and 5) against a real ``pscheduler``
on each broker: the SQL transport on SQLite, Redis and RabbitMQ, each with the
job store on PostgreSQL, a secret and an allowlist, and a memory limit
(``RLIMIT_AS``).

A raw producer writes straight onto ``pyramid_scheduler.<queue>`` (with
Kombu, or into the broker's own storage); then a legitimate job is sent
behind the junk. Each test asserts that none of the junk ran, that the
daemon stayed up, and that the legitimate job ran within a generous bound.
One daemon per broker serves the module (most tests); the start-up tests
start their own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import resource
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kombu
import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from conftest import REDIS_URL, make_settings
from daemons import Daemon, wait_until, write_ini
from integration.sampleapp import jobs
from pyramid_scheduler.brokers.connection import make_connection, make_queue
from pyramid_scheduler.brokers.fanout import events_exchange
from pyramid_scheduler.brokers.sql import messages as messages_table
from pyramid_scheduler.settings import parse_settings
from pyramid_scheduler.triggers.build import trigger_spec
from pyramid_scheduler.wire.messages import JobRequest
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "door-secret-0123456789abcdef0123"
JSON = "application/json"
#: The daemon's address-space limit: a few compression bombs inflated
#: would exceed it (and a daemon that inflated them would be killed or fail).
MEMORY_LIMIT = 1536 << 20
#: Seconds within which the legitimate job behind the junk must run.
BOUND = 20.0
DEAD_LETTERS_MAX = 100


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in kB (``VmHWM``: the peak resident size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks


@functools.cache
def bomb(inflated_mb: int = 200) -> bytes:
    """zlib (Kombu's ``application/x-gzip``) of *inflated_mb* MB of zeros: ~200 KB."""
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join([*(packer.compress(chunk) for _ in range(inflated_mb)), packer.flush()])


class Door:
    """One ``pscheduler`` on one broker, its web side and a raw producer."""

    def __init__(self, tmp: Path, broker: str, **extra: str) -> None:
        var = tmp / "var"
        var.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.tmp = tmp
        self.oracle = str(tmp / "oracle.sqlite")
        self.app_settings = make_settings(
            var,
            broker,
            "postgresql",
            secret=SECRET,
            allowed_modules="integration.sampleapp",
            **{"dead_letters.max": str(DEAD_LETTERS_MAX), **extra},
        )
        self.app_settings["sampleapp.oracle"] = self.oracle
        self.settings = parse_settings(self.app_settings)
        self.kqueue = make_queue(self.settings, "jobs")
        self.ini = write_ini(tmp / "door.ini", self.app_settings)
        with Configurator(settings=self.app_settings) as config:
            config.include("pyramid_scheduler")
        self.proxy = config.registry.scheduler
        self.daemon: Daemon | None = None
        self._store = sa.create_engine(self.settings.jobstore_url or "")

    # -- the daemon -------------------------------------------------------------------
    def start(self) -> Daemon:
        self.daemon = Daemon.start(self.ini, env={"MALLOC_ARENA_MAX": "2"}, preexec_fn=limit_memory)
        self.daemon.wait_consuming()
        return self.daemon

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def peak_kb(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
        self.proxy.close()
        self._delete_queues()
        with self._store.begin() as conn:
            prefix = self.settings.jobstore_tablename_prefix.lower()
            for name in (
                conn.execute(sa.text("select tablename from pg_tables where tablename like :p"), {"p": f"{prefix}%"})
                .scalars()
                .all()
            ):
                conn.execute(sa.text(f'drop table if exists "{name}" cascade'))
        self._store.dispose()

    def _delete_queues(self) -> None:
        if self.settings.broker.kind == "sql":
            return
        if self.broker == "redis":  # and what the tests wrote beside the queue
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in list(client.scan_iter(match=f"{self.settings.broker_queue_prefix}*")):
                client.delete(key)
            client.close()
        try:
            with make_connection(self.settings) as conn:
                self.kqueue(conn.default_channel).delete()
        except Exception as exc:  # noqa: BLE001 - the outcome matters more than the cleanup
            print(f"could not delete the test's queue: {exc}")

    # -- messages ---------------------------------------------------------------------
    def body(self, tag: str, func: str = "integration.sampleapp.jobs:record", **fields: Any) -> bytes:
        """An ``add`` of ``jobs.record(oracle, tag)`` as a producer sends it."""
        request = JobRequest(
            op="add",
            id=tag,
            queue="jobs",
            func=func,
            args=[self.oracle, tag],
            trigger=trigger_spec("now", timezone.utc, run_date=datetime.now(timezone.utc)),
        )
        wire = request.to_wire()
        wire.update(fields)
        return json.dumps(wire, separators=(",", ":")).encode()

    def signature(self, body: bytes, **properties: str) -> dict[str, str]:
        return {
            SIGNATURE_HEADER: sign_message(
                body, self.settings.secret or b"", properties.pop("routing_key", self.kqueue.routing_key), **properties
            )
        }

    def publish(self, *messages: tuple[bytes, dict[str, Any]], **options: Any) -> None:
        """Publish raw (body, headers) pairs on the queue, as any Kombu producer can."""
        options = {"content_type": JSON, "content_encoding": "utf-8", **options}
        with make_connection(self.settings) as conn:
            producer = conn.Producer()
            for body, headers in messages:
                producer.publish(
                    body,
                    exchange="",
                    routing_key=self.kqueue.routing_key,
                    declare=[self.kqueue],
                    headers=headers,
                    **options,
                )

    def legit(self, tag: str | None = None) -> str:
        tag = tag or f"legit-{uuid.uuid4().hex[:8]}"
        self.proxy.add_async_job(jobs.record, args=[self.oracle, tag], id=tag)
        return tag

    def wait_ran(self, tag: str, timeout: float = BOUND) -> None:
        assert self.daemon is not None
        wait_until(
            lambda: jobs.runs(self.oracle, tag), f"the legitimate job {tag} to run", timeout, alive=(self.daemon,)
        )

    def ran(self, tags: list[str]) -> list[str]:
        return [tag for tag in tags if jobs.runs(self.oracle, tag)]

    def dead_letters(self, after: int = 0) -> list[Any]:
        with self._store.connect() as conn:
            return conn.execute(
                sa.text(
                    f"select id, reason, body, size, sha256 from {self.settings.jobstore_tablename_prefix}"
                    "dead_letters where id > :after order by id"
                ),
                {"after": after},
            ).all()

    def last_dead_letter(self) -> int:
        rows = self.dead_letters()
        return rows[-1].id if rows else 0

    def wait_dead_letters(self, after: int, count: int, timeout: float = BOUND) -> list[Any]:
        assert self.daemon is not None
        return wait_until(
            lambda: (lambda rows: rows if len(rows) >= count else None)(self.dead_letters(after)),
            f"{count} dead letter(s)",
            timeout,
            alive=(self.daemon,),
        )

    def check_refused(
        self, sent: list[tuple[bytes, dict[str, Any]]], junk: list[str], expected: list[str], after: int, **options: Any
    ) -> list[Any]:
        """Publish *sent*, then a legitimate job: it runs within the bound,
        none of *junk* ran, and each of *expected* is in some dead letter."""
        self.publish(*sent, **options)
        self.wait_ran(self.legit())
        letters = self.wait_dead_letters(after, len(sent))
        assert self.ran(junk) == []
        reasons = " | ".join(row.reason for row in letters)
        for text in expected:
            assert text in reasons, reasons
        assert self.daemon is not None and self.daemon.alive
        return letters


def tag(prefix: str = "junk") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", params=["sqlite", "redis", "rabbitmq"])
def door(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    from conftest import require_service

    require_service("postgresql")
    door = Door(tmp_path_factory.mktemp(f"door-{request.param}"), request.param)
    try:
        door.start()
        door.wait_ran(door.legit("warm-up"), timeout=60)
        yield door
    finally:
        if door.daemon is not None:
            print(door.daemon.log()[-20000:])
        door.close()


# -- item 3: refused before decoding -----------------------------------------------------


def test_compression_bombs_are_refused_without_inflating(door):
    before, after = door.peak_kb(), door.last_dead_letter()
    junk = [tag() for _ in range(3)]
    # Signed, or not: Kombu would inflate each to 200 MB before any check of ours.
    sent = [(bomb(), {"compression": "application/x-gzip", **door.signature(bomb())}) for _ in junk]
    door.check_refused(sent, junk, ["compressed message ('application/x-gzip')"], after)
    assert door.peak_kb() - before < 64 * 1024, "the daemon's peak memory grew by more than 64 MB"


def test_content_encodings_other_than_utf8_are_refused(door):
    after = door.last_dead_letter()
    junk = [tag(), tag()]
    for name, encoding in zip(junk, ["latin-1", "zlib_codec"], strict=True):
        body = door.body(name)
        door.publish((body, door.signature(body, content_encoding=encoding)), content_encoding=encoding)
    door.wait_ran(door.legit())
    reasons = " | ".join(row.reason for row in door.wait_dead_letters(after, 2))
    assert "content encoding 'latin-1' is not utf-8" in reasons and "'zlib_codec'" in reasons
    assert door.ran(junk) == []


def test_entries_above_the_size_limit_are_refused_before_decoding(door):
    before, after = door.peak_kb(), door.last_dead_letter()
    big = b'{"v":1,"pad":"' + b"x" * (8 << 20) + b'"}'
    if door.broker == "redis":
        # All in the queue at once (one MULTI), as when the daemon starts
        # behind them: taken in one round trip.
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        pipe = client.pipeline(transaction=True)
        for _ in range(6):
            pipe.lpush(door.kqueue.name, json.dumps(kombu_envelope(big, door.kqueue.name)))
        pipe.execute()
        client.close()
        door.wait_ran(door.legit())
        reasons = " | ".join(row.reason for row in door.wait_dead_letters(after, 6))
        assert "broker entry too large to read" in reasons  # cut short in Redis
    else:
        door.check_refused([(big, {})] * 6, [], ["above"], after)
    # Each 8 MB entry read whole and decoded (JSON, base64) would hold ~30 MB
    # per message of a batch. On the SQL transport a row is read one at a
    # time; on Redis the first entry of a round trip is read whole (redis-py
    # copies it about three times), those behind it are cut short in Redis;
    # on RabbitMQ py-amqp reads every body before the door (the broker's
    # max_message_size bounds them).
    growth = door.peak_kb() - before
    bound = {"sqlite": 64, "redis": 64, "rabbitmq": 160}[door.broker]
    assert growth < bound * 1024, f"peak grew by {growth} kB"


def kombu_envelope(body: bytes, queue: str) -> dict[str, Any]:
    """A message as Kombu's Redis transport stores it."""
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-type": JSON,
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


HEADER_VALUES = ["é", "v2=é", 12345, ["v2=00"], {"v2": "00"}, "", "0" * 64, None]


def test_signature_headers_of_any_value_are_refused(door):
    after = door.last_dead_letter()
    sent, junk = [], []
    for value in HEADER_VALUES:
        name = tag()
        junk.append(name)
        sent.append((door.body(name), {SIGNATURE_HEADER: value}))
    # What held up, kept: unsigned, wrong key, re-cased, a changed body under a good signature.
    for make in (
        lambda b: {},
        lambda b: {SIGNATURE_HEADER: sign_message(b, b"another-key-0123456789abcdef", "x")},
        lambda b: {SIGNATURE_HEADER: door.signature(b)[SIGNATURE_HEADER].upper()},
        lambda b: door.signature(b.replace(b'"args":[', b'"args":[ ')),
    ):
        name = tag()
        junk.append(name)
        body = door.body(name)
        sent.append((body, make(body)))
    door.check_refused(sent, junk, ["not signed", "bad message signature"], after)


def test_events_and_odd_bodies_do_not_stop_the_daemon(door):
    after = door.last_dead_letter()
    name = tag()
    sent = [
        (b"\xff\xfe not utf-8", {}),
        (b"[" * 100_000, {}),
        (b"\x00" * 64, {}),
        (json.dumps({"v": 1, "type": "job.executed", "event": {"type": "x"}}).encode(), {}),
    ]
    body = door.body(name, func="os:system", args=["touch /tmp/pwned-door"])
    sent.append((body, door.signature(body)))
    door.check_refused(sent, [name], ["not in scheduler.allowed_modules"], after)


# -- item 5: replays, nesting, impossible crons --------------------------------------------


def test_header_swaps_and_replays_are_refused(door):
    after = door.last_dead_letter()
    old = (datetime.now(timezone.utc) - timedelta(days=8)).isoformat()  # result_ttl is 7 days
    swapped, typed, replayed, body_only = tag(), tag(), tag(), tag()
    bodies = [door.body(swapped), door.body(typed), door.body(replayed, sent_at=old), door.body(body_only)]
    sent = [
        # Signed for another queue, then published on this one.
        (bodies[0], door.signature(bodies[0], routing_key="pyramid_scheduler.reports")),
        # Signed as text/plain, published as JSON.
        (bodies[1], door.signature(bodies[1], content_type="text/plain")),
        (bodies[2], door.signature(bodies[2])),
        # The body-only signature of pre-release builds.
        (bodies[3], {SIGNATURE_HEADER: hmac.new(door.settings.secret or b"", bodies[3], hashlib.sha256).hexdigest()}),
    ]
    door.check_refused(
        sent,
        [swapped, typed, replayed, body_only],
        ["bad message signature", "possible replay", "version 1 signature"],
        after,
    )


def test_nesting_beyond_the_producers_limit_and_impossible_crons_are_refused_cheaply(door):
    after = door.last_dead_letter()
    deep = tag()
    value: Any = 0
    for _ in range(200):
        value = [value]
    body = door.body(deep, args=[door.oracle, deep, value])
    sent = [(body, door.signature(body))]
    crons = [tag() for _ in range(20)]
    for name in crons:
        body = door.body(name, trigger={"type": "cron", "crontab": "0 0 31 2 *", "timezone": "UTC"})
        sent.append((body, door.signature(body)))
    cpu = cpu_seconds(door.pid)
    letters = door.check_refused(sent, [deep, *crons], ["nested deeper than 32", "never fires"], after)
    assert len(letters) == len(sent)
    # Twenty impossible crons cost ~14 s of CPU before the search was bounded.
    assert cpu_seconds(door.pid) - cpu < 4.0


# -- item 4: what the job store cannot store ----------------------------------------------


def test_what_postgresql_cannot_store_is_refused_alone(door):
    after = door.last_dead_letter()
    nul_id, junk_nul = "nul\x00id-" + uuid.uuid4().hex[:6], b'{"v":1}\x00\x00junk'
    # Unsigned, junk with NUL bytes, and signed (PostgreSQL refuses NUL in text).
    sent = [(door.body(nul_id), {}), (junk_nul, {})]
    body = door.body(nul_id)
    sent.append((body, door.signature(body)))
    surrogate = "sur\ud800-" + uuid.uuid4().hex[:6]  # not UTF-8: no database column takes it
    body = door.body(surrogate)
    sent.append((body, door.signature(body)))
    mark = len(door.daemon.log()) if door.daemon else 0
    started = time.monotonic()
    door.publish(*sent)
    legit = [door.legit() for _ in range(3)]
    for name in legit:
        door.wait_ran(name, timeout=10)
    assert time.monotonic() - started < 10  # no back-off: not taken for a job-store outage
    letters = door.wait_dead_letters(after, 4)
    assert door.ran([nul_id]) == []  # (the oracle cannot hold the surrogate: its run would fail)
    assert "unexpected error" not in door.daemon.log()[mark:]
    # The junk with NUL bytes is dead-lettered (escaped), not requeued for ever.
    assert any(row.size == len(junk_nul) and row.body.startswith('{"v":1}\\x00') for row in letters)
    assert door.daemon is not None and "job store unavailable" not in door.daemon.log()[mark:]


def test_dead_letters_are_capped_and_do_not_hold_jobs_back(door):
    count = DEAD_LETTERS_MAX + 60
    junk = [(b'{"junk":' + str(i).encode() + b',"pad":"' + b"y" * 6000 + b'"}', {}) for i in range(count)]
    door.publish(*junk)
    started = time.monotonic()
    door.wait_ran(door.legit(), timeout=BOUND)
    elapsed = time.monotonic() - started
    assert door.daemon is not None
    door.daemon.wait_log("dead letter(s) dropped to keep scheduler.dead_letters.max", timeout=BOUND)
    rows = door.dead_letters()
    assert len(rows) <= DEAD_LETTERS_MAX
    assert all(len(row.body) <= 4 * 4096 and row.size is not None and len(row.sha256) == 64 for row in rows)
    assert any(row.size > 6000 and len(row.body) <= 4096 for row in rows)  # a prefix of the body
    print(f"{count} dead letters, then the legitimate job ran after {elapsed:.2f}s")


# -- start-up: nothing in the broker keeps the daemon down --------------------------------


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_junk_waiting_at_start_does_not_keep_the_daemon_down(tmp_path, broker):
    from conftest import require_service

    require_service("postgresql")
    door = Door(tmp_path, broker)
    try:
        name = tag()
        body = door.body(name)
        door.publish((body, {SIGNATURE_HEADER: "é"}), (bomb(), {"compression": "application/x-gzip"}))
        if broker == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            queue = door.kqueue.name
            client.hset(f"{door.settings.broker_queue_prefix}unacked", "tag-1", b"\xff not json")
            client.hset(f"{door.settings.broker_queue_prefix}unacked", "tag-2", b'{"a": 1}')
            client.set(f"{queue}:processing", "not a list")
            client.lpush(queue, b"\x00\xff garbage entry")
            client.close()
        elif broker == "sqlite":
            engine = sa.create_engine(door.settings.broker.url)
            with engine.begin() as conn:
                conn.execute(
                    messages_table.insert().values(
                        queue=door.kqueue.name, delivery_tag="garbage", visible_at=0.0, payload="\x00 not json"
                    )
                )
            engine.dispose()
        door.start()
        door.wait_ran(door.legit())
        assert door.ran([name]) == []
        assert door.daemon is not None
        log = door.daemon.log()
        assert "message refused and dead-lettered: compressed message" in log
        if broker == "redis":
            assert "left alone" in log
    finally:
        if door.daemon is not None:
            print(door.daemon.log())
        door.close()


# -- the web processes' event subscriber ----------------------------------------------------


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_bad_events_do_not_stop_the_event_subscriber(tmp_path, broker):
    var = tmp_path / "var"
    var.mkdir()
    settings = make_settings(var, broker, secret=SECRET, **{"events.subscribe": "true", "events.publish": "false"})
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    app = config.make_wsgi_app()
    proxy = app.registry.scheduler
    heard: list[Any] = []
    proxy.add_listener(heard.append)
    try:
        subscriber = proxy._subscriber
        assert subscriber.ready.wait(30)
        parsed = parse_settings(settings)
        exchange = events_exchange(parsed)

        def event(job_id: str, **fields: Any) -> bytes:
            return json.dumps(
                {
                    "v": 1,
                    "type": "job.executed",
                    "job_id": job_id,
                    "seq": 1,
                    "origin": "elsewhere",
                    "event": {"job_id": job_id, **fields},
                }
            ).encode()

        def signed(body: bytes) -> dict[str, str]:
            return {SIGNATURE_HEADER: sign_message(body, parsed.secret or b"", exchange.name)}

        odd = event("c", seq="x", scheduled_run_time="never")
        bad = [
            (event("a"), {SIGNATURE_HEADER: "é"}),
            (event("b", type="x"), signed(event("b", type="x"))),
            (bomb(), {"compression": "application/x-gzip"}),
            (b"\xff", {}),
            (odd, signed(odd)),
        ]
        with make_connection(parsed) as conn:
            producer = kombu.Producer(conn)
            for body, headers in [*bad, (event("good"), signed(event("good")))]:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key="",
                    declare=[exchange],
                    headers=headers,
                    content_type=JSON,
                    content_encoding="utf-8",
                )
        wait_until(lambda: any(e.get("job_id") == "good" for e in heard), "the good event")
        assert subscriber._thread is not None and subscriber._thread.is_alive()
        assert {e.get("job_id") for e in heard} <= {"good", "b", "c"}  # refused, or read without its odd fields
    finally:
        proxy.close()
        sub = getattr(proxy, "_subscriber", None)
        if sub is not None:
            sub.stop()
