"""Tasks of the sample application (:mod:`pyramid_scheduler.tasks`), and a
pyramid_tm application whose views send them with ``delay()``.

``pscheduler`` loads it with ``use = call:integration.sampleapp.tasks:main``;
tests build it in-process under WebTest. Views (JSON):

* ``/add?x=X&y=Y``: ``add.delay(X, Y)``; returns the handle's ``id`` and
  the ``status`` it had inside the view's transaction;
* ``/fail?message=M``: ``fail.delay(M)``, whose run raises ``ValueError(M)``.

The declarations (``@periodic``, ``@cron``) register only where this
module is scanned: by a test, or by :func:`main` with ``tasksapp.scan =
true``.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator

from pyramid_scheduler import cron, periodic, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(delay=3600, ttl=60)
def later(tag: str) -> str:
    return tag


@periodic(seconds=600, start_now=True, id="tick-now")
def tick() -> str:
    return "tick"


@periodic(minutes=10, id="tock-later")
def tock() -> str:
    return "tock"


@cron(crontab="30 7 * * *", id="daily")
def daily() -> str:
    return "daily"


def add_view(request: Any) -> dict[str, Any]:
    handle = add.delay(int(request.params["x"]), int(request.params["y"]))
    return {"id": handle.id, "status": handle.status}


def fail_view(request: Any) -> dict[str, Any]:
    return {"id": fail.delay(request.params["message"]).id}


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_scheduler")
        if settings.get("tasksapp.scan") == "true":
            config.scan(__name__)
        for name, view in (("add", add_view), ("fail", fail_view)):
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name, renderer="json")
    return config.make_wsgi_app()
