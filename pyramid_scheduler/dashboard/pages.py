"""The dashboard's pages: HTML shells that ``static/dashboard.js`` fills.

Beside the JSON API (:mod:`pyramid_scheduler.dashboard.api`): each page is
``page.html`` with the page's name, the API's URL, the CSRF token and, on a
job's page, its id -- every value HTML-escaped here and read by the script
from ``data-`` attributes; everything else the script asks the API for.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.request import Request
from pyramid.response import Response

ROUTE = "scheduler.dashboard.page"
SHELL = Template((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))
#: Each page: its route's pattern (under the dashboard's path) and title.
PAGES = {
    "overview": ("", "Overview"),
    "jobs": ("/jobs", "Jobs"),
    "job": ("/jobs/{job_id:.+}", "Job"),
    "dead-letters": ("/dead-letters", "Dead letters"),
}


def add_pages(config: Configurator, path: str, permission: str | None) -> None:
    for name, (pattern, _title) in PAGES.items():
        config.add_route(f"{ROUTE}.{name}", path + pattern, request_method="GET")
        config.add_view(page, route_name=f"{ROUTE}.{name}", permission=permission)
    config.add_route(f"{ROUTE}.slash", path + "/", request_method="GET")
    config.add_view(page, route_name=f"{ROUTE}.slash", permission=permission)


def page(request: Request) -> Response:
    """One page's shell."""
    name = request.matched_route.name.rpartition(".")[2]
    name = "overview" if name == "slash" else name
    base = request.route_path(f"{ROUTE}.overview")
    job_id = request.matchdict.get("job_id", "")
    title = PAGES[name][1] + (f" {job_id}" if job_id else "")
    body = SHELL.substitute(
        title=html.escape(title),
        page=name,
        base=html.escape(base),
        api=html.escape(base + "/api"),
        job=html.escape(job_id),
        token=html.escape(get_csrf_token(request)),
        css=html.escape(request.static_path("pyramid_scheduler.dashboard:static/dashboard.css")),
        js=html.escape(request.static_path("pyramid_scheduler.dashboard:static/dashboard.js")),
    )
    response = Response(body, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
