"""The raw limits: the broker driven directly with the same payload.

Producers run in the bench process; each consumer is a subprocess
(``python -m bench.raw KIND URL QUEUE``) that takes messages one at a time
and runs :func:`bench.jobs.record` with the message's ``args``:

* ``redis``: redis-py ``LPUSH`` / ``BRPOP``;
* ``amqp``: pika, a durable queue, persistent messages, publisher confirms,
  manual acks (prefetch 64, as the daemon's);
* ``sqlite``: one ``INSERT`` + commit per message; the consumer selects the
  oldest row, deletes it and commits, and sleeps 20 ms when the table is
  empty (the polling interval of pyramid_scheduler's SQL transport), in WAL
  mode with ``synchronous=NORMAL`` like the package's SQLite files.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

from bench.jobs import record

SQLITE_POLL = 0.02


def sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body TEXT NOT NULL)"
    )
    return conn


def pika_url(url: str) -> str:
    """Kombu's ``amqp://host//`` means the vhost ``/``; pika wants ``%2F``."""
    return url[:-1] + "%2F" if url.endswith("//") else url


class Producer:
    """``put(body)`` publishes one message and returns once the broker has it."""

    def __init__(self, kind: str, url: str, queue: str) -> None:
        self.kind, self.url, self.queue = kind, url, queue
        if kind == "redis":
            import redis

            self.client: Any = redis.Redis.from_url(url)
            self.client.delete(queue)
        elif kind == "amqp":
            import pika

            self.conn = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
            self.channel = self.conn.channel()
            self.channel.queue_declare(queue, durable=True)
            self.channel.confirm_delivery()
            self.props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        else:
            self.db = sqlite_connect(url)

    def put(self, body: bytes) -> None:
        if self.kind == "redis":
            self.client.lpush(self.queue, body)
        elif self.kind == "amqp":
            self.channel.basic_publish("", self.queue, body, self.props, mandatory=False)
        else:
            self.db.execute("INSERT INTO q (queue, body) VALUES (?, ?)", (self.queue, body.decode()))

    def close(self, delete: bool = False) -> None:
        if self.kind == "redis":
            if delete:
                self.client.delete(self.queue)
            self.client.close()
        elif self.kind == "amqp":
            if delete:
                self.channel.queue_delete(self.queue)
            self.conn.close()
        else:
            self.db.close()


def run_job(body: bytes | str) -> None:
    record(*json.loads(body)["args"])


def consume(kind: str, url: str, queue: str) -> None:
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(url)
        while True:
            item = client.brpop([queue], timeout=1)
            if item is not None:
                run_job(item[1])
    elif kind == "amqp":
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_qos(prefetch_count=64)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            run_job(body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    else:
        db = sqlite_connect(url)
        while True:
            row = db.execute("SELECT id, body FROM q WHERE queue = ? ORDER BY id LIMIT 1", (queue,)).fetchone()
            if row is None:
                time.sleep(SQLITE_POLL)
                continue
            db.execute("DELETE FROM q WHERE id = ?", (row[0],))
            run_job(row[1])


if __name__ == "__main__":
    consume(*sys.argv[1:4])
