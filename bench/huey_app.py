"""huey with the same Redis server and the same jobs, for comparison.

The worker runs ``huey_consumer bench.huey_app.huey -k process -w N``; the
Redis URL and the queue's name come from ``BENCH_HUEY_URL`` /
``BENCH_HUEY_NAME``. No results are stored, and messages are JSON (huey's
default is pickle): the message tuple, as a JSON list.
"""

from __future__ import annotations

import json
import os
from typing import Any

from huey import RedisHuey
from huey.registry import Message
from huey.serializer import Serializer

from bench import jobs


class JSONSerializer(Serializer):  # type: ignore[misc]
    def _serialize(self, data: Any) -> bytes:
        return json.dumps(list(data), separators=(",", ":")).encode()

    def _deserialize(self, data: bytes) -> Any:
        return Message(*json.loads(data))


def make(url: str, name: str) -> tuple[Any, Any, Any]:
    """A huey on *url* with the queue *name*, and its tasks ``record`` and ``spin``."""
    huey = RedisHuey(name, url=url, results=False, serializer=JSONSerializer())
    return huey, huey.task(name="record")(jobs.record), huey.task(name="spin")(jobs.spin)


huey, record, spin = make(
    os.environ.get("BENCH_HUEY_URL", "redis://127.0.0.1:6379/13"), os.environ.get("BENCH_HUEY_NAME", "bench")
)
