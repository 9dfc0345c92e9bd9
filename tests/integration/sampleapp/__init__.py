"""A small Pyramid application for the integration tests.

``pscheduler`` loads it from an INI file (``use = call:integration.sampleapp:main``);
the tests also build it in-process (web side, and combined mode under WebTest).

Settings of its own:

* ``sampleapp.include_scheduler`` (default true): false leaves
  pyramid_scheduler out, to test pscheduler's refusal.
* ``sampleapp.oracle``: an SQLite file; when set, a listener records every
  scheduler event of the process that runs the jobs into it
  (:func:`integration.sampleapp.jobs.record_event`).
* ``sampleapp.listeners``: dotted names of more listeners, called like
  ``record_event`` (e.g. those of :mod:`integration.sampleapp.failing`).
* ``sampleapp.marker``: any text; jobs record it as proof that the
  application's registry was current while they ran.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.settings import asbool, aslist

from . import jobs


def enqueue_view(request: Any) -> dict[str, Any]:
    """``/enqueue?tag=T``: run ``jobs.record(oracle, T)`` as soon as possible."""
    settings = request.registry.settings
    tag = request.params["tag"]
    job_id = request.registry.scheduler.add_async_job(jobs.record, args=[settings["sampleapp.oracle"], tag], id=tag)
    return {"job_id": job_id}


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    with Configurator(settings=settings) as config:
        if asbool(settings.get("sampleapp.include_scheduler", True)):
            config.include("pyramid_scheduler")
            oracle = settings.get("sampleapp.oracle")
            if oracle:
                config.registry.scheduler.add_listener(jobs.record_event, args=(oracle,))
                # sampleapp.listeners: more listeners (dotted names), same arguments.
                for name in aslist(settings.get("sampleapp.listeners", "")):
                    config.registry.scheduler.add_listener(config.maybe_dotted(name), args=(oracle,))
        config.add_route("enqueue", "/enqueue")
        config.add_view(enqueue_view, route_name="enqueue", renderer="json")
    return config.make_wsgi_app()
