"""The Pyramid application ``pscheduler`` loads in the bench: nothing but
pyramid_scheduler (``use = call:bench.app:main``)."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
    return config.make_wsgi_app()
