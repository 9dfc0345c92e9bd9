"""The operations settings: the dashboard, the health probe and the metrics.

Read by ``config.include("pyramid_scheduler.dashboard")`` (the web views) and
by ``pscheduler`` (``metrics.listen``). Appended to
:data:`pyramid_scheduler.settings.spec.SETTINGS`.
"""

from __future__ import annotations

from pyramid_scheduler.settings.values import Setting, Text

#: A URL path: ``/``, then letters, digits, ``_ . - /``; no trailing ``/``.
_PATH = Text(
    pattern=r"^(/[A-Za-z0-9_.-]+)+$",
    expected="a URL path starting with / (letters, digits, _ . - and /), without a trailing /",
)
_PERMISSION = Text(pattern=r"^\S*$", expected="a permission name (no blanks)")
#: The dashboard's: never empty, which would open its pages and actions to all.
_DASHBOARD_PERMISSION = Text(pattern=r"^\S+$", expected="a permission name (no blanks, not empty)")
_LISTEN = Text(
    pattern=r"^(|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})$",
    expected="HOST:PORT (e.g. 127.0.0.1:9108), or nothing to serve no metrics from the daemon",
)

OPERATIONS: tuple[Setting, ...] = (
    Setting(
        "dashboard.path",
        _PATH,
        default="/scheduler",
        doc="""Where ``config.include("pyramid_scheduler.dashboard")`` mounts the dashboard,
its JSON API (``{path}/api/``), the health probe (``{path}/health``) and the metrics
(``{path}/metrics``); ``config.include("pyramid_scheduler.metrics")`` alone mounts
these two. See :doc:`operations`.""",
    ),
    Setting(
        "dashboard.permission",
        _DASHBOARD_PERMISSION,
        default="scheduler.admin",
        doc="""The permission every dashboard page and JSON API view requires, under the
application's own security policy (``config.set_security_policy``). An application
without a security policy grants every permission: set one before you include the
dashboard in production.""",
    ),
    Setting(
        "health.permission",
        _PERMISSION,
        default_doc="none: the probe is public",
        doc="""The permission ``{path}/health`` requires; empty leaves it public, for a load
balancer or a Kubernetes probe. It tells which queues are served and whether the broker
and the job store answer, never job data.""",
    ),
    Setting(
        "metrics.permission",
        _PERMISSION,
        default_doc="the value of ``dashboard.permission``",
        doc="""The permission ``{path}/metrics`` (Prometheus text format) requires.
``public`` (the word) leaves it open, e.g. to a scraper on a private network.""",
    ),
    Setting(
        "metrics.listen",
        _LISTEN,
        default_doc="none",
        doc="""``HOST:PORT`` on which each ``pscheduler`` daemon serves ``/metrics`` and
``/health`` itself, e.g. ``127.0.0.1:9108``. With ``--processes N`` each process takes the
next port (``9108``, ``9109``, ...), so each daemon has its own series.""",
    ),
)
