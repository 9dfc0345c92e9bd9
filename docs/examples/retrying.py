"""Retries, ``wait`` and ``ttl`` in one process: ``python docs/examples/retrying.py``.

Combined mode on the embedded SQLite default, in a temporary folder: the job
runs in this process, fails twice like a flaky remote service, and succeeds
at its third attempt.
"""

import tempfile

from pyramid.config import Configurator

ATTEMPTS: list[str] = []


def fetch_rates(currency):
    """Fails twice, then answers."""
    ATTEMPTS.append(currency)
    if len(ATTEMPTS) < 3:
        raise ConnectionError(f"rates service unreachable (attempt {len(ATTEMPTS)})")
    return {"currency": currency, "rate": 1.08}


def main():
    var = tempfile.mkdtemp()
    settings = {
        "scheduler.combined": "true",  # run the jobs in this process
        "scheduler.broker.url": f"sqlite:///{var}/broker.sqlite",
        "scheduler.jobstore.url": f"sqlite:///{var}/jobs.sqlite",
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    config.make_wsgi_app()  # ApplicationCreated: combined mode starts
    scheduler = config.registry.scheduler
    try:
        job_id = scheduler.add_async_job(
            fetch_rates,
            args=["EUR"],
            retries=3,
            retry_delay=0.5,
            retry_backoff=2.0,  # after 0.5 s, then 1 s, then 2 s
            ttl=3600,
        )  # keep the finished record for an hour
        record = scheduler.wait(job_id, timeout=30)
        print(
            record["status"],
            "after",
            record["runs"],
            "runs;",
            "retries left:",
            record["retries_left"],
            "result:",
            record["result"],
        )
        for run in scheduler.get_runs(job_id):
            print(" ", run["status"], run["run_key"])
    finally:
        scheduler.shutdown()


if __name__ == "__main__":
    import retrying  # the job must be importable by name, not from __main__

    retrying.main()
