"""A small Pyramid application that schedules jobs from a web page.

Run it with ``python3 dev.py demo`` from a checkout: it serves
http://127.0.0.1:6543/ with ``pserve development.ini`` and runs the jobs in
``pscheduler development.ini``, both on the embedded SQLite default.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy, get_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from pyramid_scheduler.demo import jobs
from pyramid_scheduler.exceptions import SchedulerError

PAGE = Template((Path(__file__).parent / "index.html").read_text(encoding="utf-8"))

#: What the form offers: label -> job function.
ACTIONS = {"say": jobs.say, "slow": jobs.slow, "fail": jobs.fail}

#: Statuses after which a job can no longer be canceled.
FINAL = {"done", "failed", "missed", "expired", "canceled", "interrupted", "parked"}


#: The environment variable the demo takes its ``scheduler.secret`` from.
SECRET_ENV = "PYRAMID_SCHEDULER_SECRET"


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """The WSGI application (``use = egg:pyramid_scheduler#demo``).

    Without ``scheduler.secret`` in its settings, the demo signs its messages
    with ``$PYRAMID_SCHEDULER_SECRET`` or, when that is unset, with a secret
    generated once into ``var/scheduler-secret`` next to the INI file, which
    ``pserve`` and ``pscheduler`` then share: no secret ships in
    ``development.ini``.
    """
    if not settings.get("scheduler.secret"):
        settings["scheduler.secret"] = os.environ.get(SECRET_ENV) or demo_secret(
            Path(global_config.get("here") or ".") / "var" / "scheduler-secret"
        )
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy(samesite="Strict"))
        config.set_default_csrf_options(require_csrf=True)
        config.add_route("home", "/")
        config.add_route("add", "/jobs", request_method="POST")
        config.add_route("jobs_json", "/jobs.json")
        config.add_route("cancel", "/jobs/{job_id}/cancel", request_method="POST")
        config.scan(".")
    return config.make_wsgi_app()


def demo_secret(path: Path) -> str:
    """The secret kept in *path*, generated (readable by its owner only) if
    there is none yet; two processes starting at once get the same one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)  # fails if another process made it first: theirs is kept
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text(encoding="ascii").strip()


def schedule(request: Request) -> str:
    """Turn the form into one ``add_*_job`` call; return the job id."""
    params = request.POST
    func = ACTIONS.get(params.get("action", "say"))
    if func is None:
        raise SchedulerError(f"action: unknown action {params.get('action')!r}")
    message = params.get("message", "").strip() or "hello"
    args = [message]
    scheduler = request.registry.scheduler
    when = params.get("when", "now")
    if when == "now":
        return scheduler.add_async_job(func, args=args)
    if when == "in":
        seconds = _number(params.get("seconds", ""), "seconds")
        return scheduler.add_date_job(func, datetime.now(timezone.utc).timestamp() + seconds, args=args)
    if when == "every":
        seconds = _number(params.get("seconds", ""), "seconds")
        return scheduler.add_interval_job(func, args=args, seconds=seconds)
    if when == "cron":
        return scheduler.add_cron_job(func, args=args, crontab=params.get("crontab", ""))
    raise SchedulerError(f"when: unknown choice {when!r}")


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SchedulerError(f"{name}: expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 366 * 86400:
        raise SchedulerError(f"{name}: expected a number of seconds above 0, got {text!r}")
    return value


@view_config(route_name="home")
def home(request: Request) -> Response:
    return _page(request, notice=request.GET.get("added", ""))


@view_config(route_name="add")
def add(request: Request) -> Response:
    try:
        job_id = schedule(request)
    except SchedulerError as exc:
        return _page(request, error=str(exc), status=400)
    return HTTPSeeOther(request.route_url("home", _query={"added": job_id}))


@view_config(route_name="cancel")
def cancel(request: Request) -> Response:
    job_id = request.matchdict["job_id"]
    try:
        request.registry.scheduler.cancel_job(job_id)
    except SchedulerError as exc:
        return _page(request, error=str(exc), status=400)
    return HTTPSeeOther(request.route_url("home"))


@view_config(route_name="jobs_json", renderer="json")
def jobs_json(request: Request) -> dict[str, Any]:
    scheduler = request.registry.scheduler
    return {"jobs": scheduler.get_jobs(limit=50), "daemons": scheduler.get_daemons()}


def _page(request: Request, notice: str = "", error: str = "", status: int = 200) -> Response:
    scheduler = request.registry.scheduler
    token = html.escape(get_csrf_token(request))
    rows = "\n".join(_row(request, job, token) for job in scheduler.get_jobs(limit=50))
    daemons = scheduler.get_daemons()
    if all(d["active"] for d in daemons):
        daemon = '<p class="ok" id="daemon">Daemon running: {}</p>'.format(
            html.escape(", ".join(f"{d['queue']} by {d['owner']}" for d in daemons))
        )
    else:
        daemon = (
            '<p class="warn" id="daemon">No daemon is running the queues yet: jobs wait on the '
            "broker until <code>pscheduler development.ini</code> starts.</p>"
        )
    body = PAGE.substitute(
        token=token,
        notice=f'<p class="ok" id="notice">Job {html.escape(notice)} sent.</p>' if notice else "",
        error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
        daemon=daemon,
        rows=rows or '<tr><td colspan="7">No jobs yet.</td></tr>',
    )
    return Response(body, status=status, content_type="text/html", charset="utf-8")


def _row(request: Request, job: dict[str, Any], token: str) -> str:
    trigger = job.get("trigger") or {}
    if job["status"] in FINAL:
        action = ""
    else:
        url = html.escape(request.route_url("cancel", job_id=job["id"]))
        action = (
            f'<form method="post" action="{url}"><input type="hidden" name="csrf_token" '
            f'value="{token}"><button type="submit">Cancel</button></form>'
        )
    outcome = job.get("error") or (json.dumps(job["result"]) if job.get("result") is not None else "")
    cells = [
        job["id"],
        job["func"].rsplit(":", 1)[-1],
        _describe(trigger),
        str(job.get("args") or ""),
        job["status"],
        str(job["runs"]),
        outcome,
    ]
    tds = "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells)
    attrs = f'data-job="{html.escape(job["id"])}" data-status="{html.escape(job["status"])}"'
    return f"<tr {attrs}>{tds}<td>{action}</td></tr>"


def _describe(trigger: dict[str, Any]) -> str:
    kind = trigger.get("type", "")
    if kind == "interval":
        return f"every {trigger.get('seconds', '?')} s"
    if kind == "cron" and "crontab" in trigger:
        return f"cron {trigger['crontab']}"
    if kind == "cron":
        return "cron " + " ".join(f"{k}={v}" for k, v in trigger.items() if k not in ("type", "timezone"))
    if kind == "date":
        return f"at {trigger.get('run_date', '')}"
    return kind
