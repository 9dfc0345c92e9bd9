"""The dashboard: ``config.include("pyramid_scheduler.dashboard")``.

Beside the web side's proxy (:mod:`pyramid_scheduler.web.proxy`), at the end
of the flow for operators: it shows what the job store holds and asks the
daemons to change jobs the way ``pscheduler CONFIG-URI COMMAND`` does, with
the same functions (:mod:`pyramid_scheduler.commands.reading` and
:mod:`~pyramid_scheduler.commands.changing`), so the shell, the JSON API and
the pages give the same fields and refuse the same requests.

The design: every page is one small server-rendered HTML shell
(:mod:`pyramid_scheduler.dashboard.pages`, ``page.html``) that carries the
CSRF token and the API's URL; ``static/dashboard.js`` fills it from the JSON
API (:mod:`pyramid_scheduler.dashboard.api`) and polls it every few seconds,
writing text only with ``textContent`` (job arguments, results and
tracebacks are hostile text). No template engine, no build step, no CDN: the
CSS and JS ship in the package and are served by ``config.add_static_view``
under the dashboard's path. Every view, the static files included, requires
``scheduler.dashboard.permission`` under the application's own security
policy; every POST requires the CSRF token (``require_csrf=True`` on those
views only: the application's own CSRF options are left as they are, but it
needs a CSRF storage policy -- a session factory or
``config.set_csrf_storage_policy``).
"""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.settings import parse_only

#: The route names' prefix.
ROUTE = "scheduler.dashboard"


def includeme(config: Configurator) -> None:
    """Mount the dashboard at ``scheduler.dashboard.path`` (default
    ``/scheduler``), behind ``scheduler.dashboard.permission``, with the
    health probe and the metrics beside it (``pyramid_scheduler.metrics``);
    include ``pyramid_scheduler`` first if the application has not. The two
    settings are read at the include (routes are made from the path).

    :raises pyramid.exceptions.ConfigurationError: a bad dashboard setting,
        ``prometheus_client`` not installed (``pip install
        "pyramid_scheduler[dashboard]"``), or (at commit)
        ``scheduler.jobstore.url = memory``: the dashboard reads the job store.
    """
    from pyramid_scheduler.dashboard import api, pages

    if getattr(config.registry, "scheduler", None) is None:
        config.include("pyramid_scheduler")
    settings = parse_only(config.get_settings(), ("dashboard.path", "dashboard.permission"))
    path, permission = settings.dashboard_path, settings.dashboard_permission or None
    config.add_static_view(f"{path.lstrip('/')}/static", "pyramid_scheduler.dashboard:static", permission=permission)
    pages.add_pages(config, path, permission)
    api.add_api(config, path, permission)
    # {path}/health and {path}/metrics.
    config.include("pyramid_scheduler.metrics")

    def check_store() -> None:
        if config.registry.scheduler.settings.memory_store:
            raise ConfigurationError(
                "pyramid_scheduler.dashboard reads the job store: set scheduler.jobstore.url to a SQL database"
            )

    config.action(None, check_store)
