"""An application that declares its periodic jobs in code, for config-time
schedules (``use = call:integration.sampleapp.scheduled:main``).

``sampleapp.declarations`` picks what it declares, so a test can change the
code between two daemon starts:

* ``v1``: ``tick`` every second recording ``tick-v1``, and ``nightly`` (cron);
* ``v2``: ``tick`` every second recording ``tick-v2``; ``nightly`` is gone;
* ``scan``: what ``config.scan()`` finds in this module.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator

from pyramid_scheduler import scheduled_job

from . import jobs


@scheduled_job(cron="*/5 * * * *")
def every_five_minutes() -> str:
    return "five"


@scheduled_job(minutes=10, id="cleanup", queue="jobs", coalesce=True)
def cleanup() -> str:
    return "clean"


@scheduled_job(crontab="0 3 * * *", id="nightly-report")
def nightly_report(request: Any) -> str:
    return str(request.registry.settings["sampleapp.marker"])


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    oracle = settings["sampleapp.oracle"]
    variant = settings["sampleapp.declarations"]
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
        config.registry.scheduler.add_listener(jobs.record_event, args=(oracle,))
        if variant == "scan":
            config.scan("integration.sampleapp.scheduled")
        else:
            config.add_scheduled_job(jobs.record, seconds=1, id="tick", args=[oracle, f"tick-{variant}"])
        if variant == "v1":
            config.add_scheduled_job(
                "integration.sampleapp.jobs.record", trigger="cron", id="nightly", hour=3, args=[oracle, "nightly"]
            )
    return config.make_wsgi_app()
