"""The producer's fixtures: an application with the package included, on
SQLite files, and what it published read back from the SQL broker's table.

Used by the web side's tests and by those of the schedule forms.
"""

from __future__ import annotations

import base64
import json

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator

from pyramid_scheduler.brokers.sql import messages as messages_table
from pyramid_scheduler.wire.messages import decode


@pytest.fixture
def app_settings(tmp_path):
    return {
        "scheduler.queues": "jobs reports",
        "scheduler.broker.url": f"sqlite:///{tmp_path}/broker.sqlite",
        "scheduler.jobstore.url": f"sqlite:///{tmp_path}/jobs.sqlite",
    }


@pytest.fixture
def scheduler(app_settings):
    with Configurator(settings=app_settings) as config:
        config.include("pyramid_scheduler")
    proxy = config.registry.scheduler
    yield proxy
    proxy.close()


def published(tmp_path, name="broker.sqlite"):
    """The messages on the SQL broker (the SQLite file *name* in *tmp_path*),
    decoded; [] if nothing was ever sent."""
    if not (tmp_path / name).exists():
        return []
    engine = sa.create_engine(f"sqlite:///{tmp_path}/{name}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(messages_table.c.queue, messages_table.c.payload).order_by(messages_table.c.id)
        ).all()
    engine.dispose()
    out = []
    for queue, payload in rows:
        message = json.loads(payload)
        assert message["content-type"] == "application/json"
        assert message["properties"]["body_encoding"] == "base64"
        out.append((queue, decode(base64.b64decode(message["body"]))))
    return out
