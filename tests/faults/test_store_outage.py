"""The job store's database goes away for a while (PostgreSQL behind a TCP
proxy the test cuts): the daemon does not exit, acknowledges nothing it has
not stored, and drains the backlog once the database is back."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from tcpproxy import TCPProxy

from conftest import POSTGRES_URL
from integration.conftest import wait_until
from integration.sampleapp import jobs
from pyramid_scheduler.brokers.sql import messages as broker_messages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE = 8.0  # seconds: longer than the lease's ttl (3 s in the tests)


@pytest.fixture
def pg_proxy():
    target = urlsplit(POSTGRES_URL)
    proxy = TCPProxy((target.hostname or "127.0.0.1", target.port or 5432))
    yield proxy
    proxy.close()


def test_daemon_rides_out_a_job_store_outage(make_harness, drop_tables, pg_proxy, tmp_path):
    parts = urlsplit(POSTGRES_URL)
    url = parts._replace(
        netloc=parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{pg_proxy.port}")
    ).geturl()
    assert f":{pg_proxy.port}/" in url
    harness = make_harness(store="postgresql", **{"jobstore.url": url})
    _, prefix = drop_tables[-1]
    drop_tables[-1] = (POSTGRES_URL, prefix)  # dropped after the proxy is gone
    proxy = harness.proxy()
    daemon = harness.start()
    before = [f"before-{uuid.uuid4().hex[:6]}-{n}" for n in range(3)]
    for job_id in before:
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    for job_id in before:
        harness.wait_job(proxy, job_id, {"done"}, alive=(daemon,))

    pg_proxy.cut()
    during = [f"during-{uuid.uuid4().hex[:6]}-{n}" for n in range(20)]
    for job_id in during:  # enqueue does not need the job store
        proxy.add_async_job(jobs.record, args=[harness.oracle, job_id], id=job_id)
    time.sleep(OUTAGE)
    assert daemon.alive, daemon.log()
    assert all(not harness.runs(job_id) for job_id in during)
    broker = sa.create_engine(harness.settings["scheduler.broker.url"])
    with broker.connect() as conn:  # nothing acked while nothing could be stored
        waiting = conn.execute(sa.select(sa.func.count()).select_from(broker_messages)).scalar()
    broker.dispose()
    assert waiting == len(during), daemon.log()

    pg_proxy.restore()
    for job_id in during:
        harness.wait_job(proxy, job_id, {"done"}, timeout=60, alive=(daemon,))
    assert [len(harness.runs(job_id)) for job_id in during] == [1] * len(during)
    assert daemon.alive
    log = daemon.log()
    assert "job store unavailable" in log
    assert daemon.terminate() == 0, log
    wait_until(lambda: not daemon.alive, "the daemon to exit")
