"""The dashboard's JSON API under ``{scheduler.dashboard.path}/api/``.

Between the browser (``static/dashboard.js``, or any script) and the web
side's proxy: each view checks its query, then calls the function the
``pscheduler`` command of the same name calls
(:mod:`pyramid_scheduler.commands.reading`,
:mod:`~pyramid_scheduler.commands.changing`), so the fields are those of
``get_job``/``get_runs``. Lists are objects (``{"jobs": [...], ...}``) so that
pages can carry ``next_offset``. Errors are JSON too: ``{"error": ...,
"status": ...}`` with 400 (a bad filter or CSRF token), 403 (without the
permission), 404 (no such job or dead letter) or 409 (the job's status does
not allow the request).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from pyramid.config import Configurator
from pyramid.exceptions import BadCSRFToken
from pyramid.httpexceptions import (
    HTTPBadRequest,
    HTTPConflict,
    HTTPException,
    HTTPForbidden,
    HTTPNotFound,
)
from pyramid.request import Request
from pyramid.response import Response

from pyramid_scheduler.commands.changing import CHANGES, forget_dead_letter, request_change
from pyramid_scheduler.commands.changing import replay_letter as replay
from pyramid_scheduler.commands.output import NotFound, schedule
from pyramid_scheduler.commands.reading import dead_letter_list, job_detail, stats_report
from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.store.tables import FINAL, LIVE, RUN_STATUSES

ROUTE = "scheduler.dashboard.api"
#: Most items one list answers with; most characters of a text filter.
MAX_LIMIT = 200
MAX_TEXT = 200
#: The chart: minutes of runs, and the most runs read for it.
CHART_MINUTES = 60
CHART_RUNS = 5000


def add_api(config: Configurator, path: str, permission: str | None) -> None:
    """The API's routes and views, and its JSON error views."""
    api = f"{path}/api"
    routes = {
        # A job id may hold "/": the routes that end after it come first.
        "jobs": ("/jobs", jobs, "GET"),
        "runs": ("/jobs/{job_id:.+}/runs", runs, "GET"),
        "change": ("/jobs/{job_id:.+}/{action:" + "|".join(CHANGES) + "}", change, "POST"),
        "job": ("/jobs/{job_id:.+}", job, "GET"),
        "daemons": ("/daemons", daemons, "GET"),
        "dead_letters": ("/dead-letters", dead_letters, "GET"),
        "delete_letter": (r"/dead-letters/{letter_id:\d{1,18}}/delete", delete_letter, "POST"),
        "replay_letter": (r"/dead-letters/{letter_id:\d{1,18}}/replay", replay_letter, "POST"),
        "stats": ("/stats", stats, "GET"),
    }
    for name, (pattern, view, method) in routes.items():
        config.add_route(f"{ROUTE}.{name}", api + pattern, request_method=method)
        config.add_view(view, route_name=f"{ROUTE}.{name}", permission=permission, require_csrf=method == "POST")
    under_api = "^" + re.escape(api) + "(/|$)"
    for context in (HTTPException, HTTPBadRequest, BadCSRFToken, HTTPForbidden, HTTPNotFound):
        config.add_exception_view(json_error, context=context, path_info=under_api)


def reply(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status=status, content_type="application/json", charset="utf-8")


def json_error(exc: HTTPException, request: Request) -> Response:
    """An error of the API as JSON, with its status code."""
    text = exc.detail or exc.explanation or exc.title
    if isinstance(exc, BadCSRFToken):
        text = "the CSRF token is missing or wrong: send it as the X-CSRF-Token header or the csrf_token field"
    elif isinstance(exc, HTTPForbidden):
        text = "this needs the dashboard's permission (scheduler.dashboard.permission)"
    return reply({"error": str(text), "status": exc.code}, exc.code or 500)


def number(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.GET.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise HTTPBadRequest(f"{name}: expected a whole number from {low} to {high}, got {text[:40]!r}")
    return value


def text(request: Request, name: str, choices: tuple[str, ...] = ()) -> str | None:
    value = (request.GET.get(name) or "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT:
        raise HTTPBadRequest(f"{name}: at most {MAX_TEXT} characters")
    if choices and value not in choices:
        raise HTTPBadRequest(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def jobs(request: Request) -> Response:
    """``GET api/jobs?status=&queue=&func=&search=&limit=&offset=``: a page
    of job records, most recently changed first, of *queue*, in *status*,
    whose function reference contains *func*; ``search`` is a job id: that
    job alone, if it passes the other filters."""
    proxy = request.registry.scheduler
    status = text(request, "status", (*LIVE, *FINAL))
    queue = text(request, "queue", tuple(proxy.settings.queues))
    func, search = text(request, "func"), text(request, "search")
    limit = number(request, "limit", 50, 1, MAX_LIMIT)
    offset = number(request, "offset", 0, 0, 10**9)
    if search is None:
        found = proxy.get_jobs(queue, status, limit + 1, func, offset)
    else:
        record = None if offset else proxy.get_job(search)
        wanted = {"status": status, "queue": queue}
        found = [] if record is None else [record]
        if record is not None and not all(v is None or record[k] == v for k, v in wanted.items()):
            found = []
        if record is not None and func is not None and func not in record["func"]:
            found = []
    more = len(found) > limit
    return reply(
        {
            "jobs": [with_schedule(record) for record in found[:limit]],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
            "prev_offset": max(offset - limit, 0) if offset else None,
            "filters": {"status": status, "queue": queue, "func": func, "search": search},
            "now": time.time(),
        }
    )


def with_schedule(record: dict[str, Any]) -> dict[str, Any]:
    """A job record with ``schedule``: its trigger in a few words, as ``pscheduler jobs`` shows it."""
    return {**record, "schedule": schedule(record.get("trigger"))}


def job_id_of(request: Request) -> str:
    job_id = request.matchdict["job_id"]
    if len(job_id) > MAX_TEXT:
        raise HTTPNotFound(f"job {job_id[:40]!r}...: no such job")
    return job_id


def job(request: Request) -> Response:
    """``GET api/jobs/{id}?runs=``: what ``pscheduler job ID --json`` prints."""
    try:
        detail = job_detail(request.registry.scheduler, job_id_of(request), number(request, "runs", 50, 1, MAX_LIMIT))
    except NotFound as exc:
        raise HTTPNotFound(str(exc)) from exc
    return reply({**with_schedule(detail), "now": time.time()})


def runs(request: Request) -> Response:
    """``GET api/jobs/{id}/runs?status=&limit=``: the job's latest runs, oldest first."""
    proxy, job_id = request.registry.scheduler, job_id_of(request)
    status = text(request, "status", RUN_STATUSES)
    found = proxy.get_runs(job_id, status, number(request, "limit", 50, 1, MAX_LIMIT))
    if not found and proxy.get_job(job_id) is None:
        raise HTTPNotFound(f"job {job_id!r}: the job store has no record of it")
    return reply({"runs": found})


def change(request: Request) -> Response:
    """``POST api/jobs/{id}/cancel|pause|resume|run|retry``: the request is
    published for the job's daemon (202); what ``pscheduler cancel ID --json`` prints."""
    try:
        answer = request_change(request.registry.scheduler, request.matchdict["action"], job_id_of(request))
    except NotFound as exc:
        raise HTTPNotFound(str(exc)) from exc
    except InvalidJob as exc:
        raise HTTPConflict(str(exc)) from exc
    return reply(answer, 202)


def daemons(request: Request) -> Response:
    """``GET api/daemons``: each queue's live daemons and lease holder."""
    return reply({"queues": request.registry.scheduler.get_daemons(), "now": time.time()})


def dead_letters(request: Request) -> Response:
    """``GET api/dead-letters?queue=&limit=``: the latest dead letters, oldest first."""
    proxy = request.registry.scheduler
    queue = text(request, "queue", tuple(proxy.settings.queues))
    letters = dead_letter_list(proxy, number(request, "limit", 50, 1, MAX_LIMIT), queue)
    return reply({"dead_letters": letters, "now": time.time()})


def delete_letter(request: Request) -> Response:
    """``POST api/dead-letters/{id}/delete``: forget it."""
    try:
        return reply(forget_dead_letter(request.registry.scheduler, int(request.matchdict["letter_id"])))
    except NotFound as exc:
        raise HTTPNotFound(str(exc)) from exc


def replay_letter(request: Request) -> Response:
    """``POST api/dead-letters/{id}/replay`` (``force=1`` for one that came
    unsigned): what ``pscheduler dead-letters replay ID --json`` prints (202),
    409 when it cannot be replayed."""
    force = (request.params.get("force") or "").lower() in ("1", "true", "yes")
    try:
        return reply(replay(request.registry.scheduler, int(request.matchdict["letter_id"]), force), 202)
    except NotFound as exc:
        raise HTTPNotFound(str(exc)) from exc
    except InvalidJob as exc:
        raise HTTPConflict(str(exc)) from exc


def stats(request: Request) -> Response:
    """``GET api/stats?minutes=``: ``pscheduler stats --json``'s report, with
    ``series``: the last hour's runs by minute (``t``, ``done``, ``failed``,
    ``other``, ``late_avg``, ``late_max``), for the overview's chart."""
    proxy = request.registry.scheduler
    report = stats_report(proxy, number(request, "minutes", CHART_MINUTES, 1, 24 * 60))
    now = time.time()
    start = (now // 60 - CHART_MINUTES + 1) * 60
    return reply({**report, "series": series(proxy._ledger().run_times(start, CHART_RUNS), start), "now": now})


def series(rows: list[dict[str, Any]], start: float) -> list[dict[str, Any]]:
    """Runs by minute from *start*: counts by outcome and lateness."""
    buckets: list[dict[str, Any]] = [
        {"t": start + 60 * i, "done": 0, "failed": 0, "other": 0} for i in range(CHART_MINUTES)
    ]
    lateness: list[list[float]] = [[] for _ in buckets]
    for row in rows:
        happened = row["started_at"] or row["finished_at"] or row["scheduled_at"]
        index = int((happened - start) // 60)
        if not 0 <= index < CHART_MINUTES:
            continue
        key = row["status"] if row["status"] in ("done", "failed") else "other"
        buckets[index][key] += 1
        if row["started_at"] is not None:
            lateness[index].append(max(row["started_at"] - row["scheduled_at"], 0.0))
    for bucket, late in zip(buckets, lateness, strict=True):
        bucket["late_avg"] = sum(late) / len(late) if late else None
        bucket["late_max"] = max(late) if late else None
    return buckets
