"""A small Pyramid application that schedules jobs from a web page.

Run it with ``python3 dev.py demo`` from a checkout: it serves
http://127.0.0.1:6543/ with ``pserve development.ini`` and runs the jobs in
``pscheduler development.ini``, both on the embedded SQLite default.
"""

from __future__ import annotations

import hashlib
import html
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from string import Template
from typing import Any

from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.csrf import CookieCSRFStoragePolicy, get_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import Allowed, Denied, forget, remember
from pyramid.session import SignedCookieSessionFactory
from pyramid.view import forbidden_view_config, view_config

from pyramid_scheduler.demo import jobs
from pyramid_scheduler.exceptions import SchedulerError

PAGE = Template((Path(__file__).parent / "index.html").read_text(encoding="utf-8"))
LOGIN = Template((Path(__file__).parent / "login.html").read_text(encoding="utf-8"))

#: What the form offers: label -> job function.
ACTIONS = {"say": jobs.say, "slow": jobs.slow, "fail": jobs.fail}

#: The environment variable the demo takes its ``scheduler.secret`` from.
SECRET_ENV = "PYRAMID_SCHEDULER_SECRET"

#: DEMO ONLY: the one user and password, shown on the login page. A real
#: application checks its own users and grants ``scheduler.admin`` (or its
#: ``scheduler.dashboard.permission``) to its operators.
DEMO_USER = DEMO_PASSWORD = "demo"


class DemoSecurity:
    """DEMO ONLY: a session login (:class:`SessionAuthenticationHelper`);
    the logged-in ``demo`` user has every permission, the dashboard's
    ``scheduler.admin`` included; nobody else has any."""

    def __init__(self) -> None:
        self.helper = SessionAuthenticationHelper()

    def identity(self, request: Request) -> str | None:
        userid = self.helper.authenticated_userid(request)
        return userid if userid == DEMO_USER else None

    def authenticated_userid(self, request: Request) -> str | None:
        return self.identity(request)

    def permits(self, request: Request, context: Any, permission: str) -> Any:
        if self.identity(request) == DEMO_USER:
            return Allowed(f"{DEMO_USER} may do anything in the demo")
        return Denied("log in first (demo/demo)")

    def remember(self, request: Request, userid: str, **kw: Any) -> list[tuple[str, str]]:
        return self.helper.remember(request, userid, **kw)

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        return self.helper.forget(request, **kw)


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """The WSGI application (``use = egg:pyramid_scheduler#demo``).

    Without ``scheduler.secret`` in its settings, the demo signs its messages
    with ``$PYRAMID_SCHEDULER_SECRET`` or, when that is unset, with a secret
    generated once into ``var/scheduler-secret`` next to the INI file, which
    ``pserve`` and ``pscheduler`` then share: no secret ships in
    ``development.ini``. Its page is the form that schedules a job; the jobs
    are shown by the dashboard (``/scheduler``), behind a demo-only login.
    """
    if not settings.get("scheduler.secret"):
        settings["scheduler.secret"] = os.environ.get(SECRET_ENV) or demo_secret(
            Path(global_config.get("here") or ".") / "var" / "scheduler-secret"
        )
    session_secret = hashlib.sha256(f"demo session {settings['scheduler.secret']}".encode()).hexdigest()
    with Configurator(settings=settings) as config:
        config.include("pyramid_scheduler")
        config.set_session_factory(SignedCookieSessionFactory(session_secret, httponly=True, samesite="Strict"))
        config.set_security_policy(DemoSecurity())
        config.set_csrf_storage_policy(CookieCSRFStoragePolicy(samesite="Strict"))
        config.set_default_csrf_options(require_csrf=True)
        config.include("pyramid_scheduler.dashboard")
        config.add_route("home", "/")
        config.add_route("add", "/jobs", request_method="POST")
        config.add_route("login", "/login")
        config.add_route("logout", "/logout", request_method="POST")
        config.add_route("daemons_json", "/daemons.json")
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


@view_config(route_name="home", permission="scheduler.admin")
def home(request: Request) -> Response:
    return _page(request, notice=request.GET.get("added", ""))


@view_config(route_name="add", permission="scheduler.admin")
def add(request: Request) -> Response:
    try:
        job_id = schedule(request)
    except SchedulerError as exc:
        return _page(request, error=str(exc), status=400)
    return HTTPSeeOther(request.route_url("home", _query={"added": job_id}))


@view_config(route_name="daemons_json", renderer="json")
def daemons_json(request: Request) -> dict[str, Any]:
    """Public: whether the daemons run (``python3 dev.py demo`` waits for it); the jobs are the dashboard's."""
    return {"daemons": request.registry.scheduler.get_daemons()}


@forbidden_view_config()
def forbidden(request: Request) -> Response:
    """To the login page (the dashboard's JSON API answers 403 itself)."""
    target = request.path_qs if request.method == "GET" else "/"
    return HTTPSeeOther(request.route_url("login", _query={"next": target}))


@view_config(route_name="login")
def login(request: Request) -> Response:
    """DEMO ONLY: ``demo``/``demo`` logs in (the form's POST is CSRF-checked)."""
    target = request.params.get("next", "")
    target = target if target.startswith("/") and not target.startswith("//") else "/"
    error, status = "", 200
    if request.method == "POST":
        if request.POST.get("login") == DEMO_USER and request.POST.get("password") == DEMO_PASSWORD:
            request.session.invalidate()
            return HTTPSeeOther(target, headers=remember(request, DEMO_USER))
        error, status = "Wrong user or password (this demo's are demo and demo).", 400
    return _login_page(request, target, error, status)


@view_config(route_name="logout")
def logout(request: Request) -> Response:
    return HTTPSeeOther(request.route_url("login"), headers=forget(request))


def _login_page(request: Request, target: str, error: str, status: int) -> Response:
    token = html.escape(get_csrf_token(request))
    body = LOGIN.substitute(
        token=token,
        next=html.escape(target),
        error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
    )
    return Response(body, status=status, content_type="text/html", charset="utf-8")


def _page(request: Request, notice: str = "", error: str = "", status: int = 200) -> Response:
    scheduler = request.registry.scheduler
    dashboard = request.route_path("scheduler.dashboard.page.overview")
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
    if notice:
        url = html.escape(request.route_path("scheduler.dashboard.page.job", job_id=notice))
        notice = f'<p class="ok" id="notice">Job <a href="{url}">{html.escape(notice)}</a> sent.</p>'
    body = PAGE.substitute(
        token=html.escape(get_csrf_token(request)),
        notice=notice,
        error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
        daemon=daemon,
        dashboard=html.escape(dashboard),
        logout=html.escape(request.route_path("logout")),
    )
    return Response(body, status=status, content_type="text/html", charset="utf-8")
