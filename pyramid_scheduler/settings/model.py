"""The parsed settings: one frozen :class:`SchedulerSettings`.

Built by :func:`pyramid_scheduler.settings.parse_settings` from the
``scheduler.*`` keys (see :mod:`pyramid_scheduler.settings.spec`), or
directly with keyword arguments in tests. Its defaults are the defaults of
the settings reference (a test holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from pyramid_scheduler.settings.urls import (
    DEFAULT_BROKER_URL,
    DEFAULT_JOBSTORE_URL,
    BrokerURL,
    broker_is_local,
    mask_url,
)
from pyramid_scheduler.settings.values import PREFIX

#: The queue used when ``scheduler.queues`` is empty (as in 0.3.4).
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class SchedulerSettings:
    """Every ``scheduler.*`` setting, parsed and checked.

    Build one with :func:`parse_settings`; tests may build one directly with
    keyword arguments.
    """

    combined: bool = False
    #: ``False``: nothing is published; run-now jobs and tasks run inline
    #: (see :mod:`pyramid_scheduler.tasks`).
    enabled: bool = True
    #: Hold add_*_job/cancel_job until the current transaction commits.
    transactional: bool = True
    #: Run-now jobs are stored before their message is acked, unless they
    #: say ``durable=False`` (``False``: they say it unless they say otherwise).
    durable: bool = True
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    id: str = ""
    broker: BrokerURL = field(default_factory=lambda: BrokerURL(DEFAULT_BROKER_URL, "sql"))
    broker_transport_options: Mapping[str, Any] = field(default_factory=dict)
    broker_timeout: float = 5.0
    broker_pool_limit: int = 10
    broker_prefetch: int = 64
    broker_queue_prefix: str = "pyramid_scheduler."
    #: ``None`` means the memory job store (asked for explicitly).
    jobstore_url: str | None = DEFAULT_JOBSTORE_URL
    jobstore_tablename_prefix: str = "pyramid_scheduler_"
    #: Switch SQLite files (job store, SQL broker) to the WAL journal.
    sqlite_wal: bool = True
    housekeeping: float = 86400.0
    housekeeping_append: tuple[Callable[[], Any], ...] = ()
    misfire_grace_time: int = 3600
    coalesce: bool = True
    #: What becomes of a recurring job's overdue runs: ``skip``, ``once`` or
    #: ``all`` (see :mod:`pyramid_scheduler.daemon.catchup`).
    catch_up: str = "skip"
    #: Overdue runs of one job enumerated (recorded or run) one by one; the
    #: rest are recorded missed in one record.
    catch_up_limit: int = 100
    timezone: tzinfo = field(default_factory=lambda: ZoneInfo("UTC"))
    executor: str = "thread"
    max_workers: int = 10
    shutdown_timeout: float = 30.0
    #: Daemon processes ``pscheduler`` starts and supervises (1: itself only).
    processes: int = 1
    lease_ttl: float = 3.0
    result_ttl: float = 7 * 86400.0
    max_message_size: int = 256 * 1024
    #: Signed messages sent longer ago than this (seconds) are refused as
    #: possible replays; ``None``: ``result_ttl``; 0: no limit.
    max_message_age: float | None = None
    #: Dead letters kept; the oldest beyond this are dropped.
    dead_letters_max: int = 10000
    delegator: Callable[..., Any] | None = None
    #: HMAC-SHA256 key for signing messages; ``None`` means unsigned (warned).
    secret: bytes | None = field(default=None, repr=False)
    #: Module prefixes the daemon may import job functions from (empty: any).
    allowed_modules: tuple[str, ...] = ()
    #: Run jobs from a broker other machines can reach with neither a secret
    #: nor an allowlist (refused unless set: see :func:`posture_problem`).
    insecure: bool = False
    serializer: str = "json"
    #: What a restarted daemon does with a one-off job whose run a crash cut
    #: short: ``record`` it as interrupted (at most once), or ``rerun`` it
    #: once (at least once).
    interrupted: str = "record"
    #: Renamed job functions: old ``module:qualname`` -> new, applied to stored
    #: jobs as they load and to messages as they arrive.
    func_aliases: Mapping[str, str] = field(default_factory=dict)
    #: Receive the daemons' job events in this process (a fan-out exchange).
    events_subscribe: bool = False
    #: Publish this daemon's job events on the fan-out exchange (``None``:
    #: when ``events_subscribe`` is set, as in an INI file shared with the web).
    events_publish: bool | None = None
    #: Command patterns :func:`pyramid_scheduler.shell.run` may run (empty: none).
    shell_allowed: tuple[str, ...] = ()
    #: :mod:`pyramid_scheduler.testing` runs due jobs as soon as they are added.
    testing_eager: bool = False
    apscheduler: Mapping[str, Any] = field(default_factory=dict)
    #: ``scheduler.priority.<queue>``: each queue's default job priority.
    priorities: Mapping[str, int] = field(default_factory=dict)
    priority_aging: float = 60.0
    #: Where the dashboard, its API, the health probe and the metrics are mounted.
    dashboard_path: str = "/scheduler"
    #: Seconds between two checks of a run held back by ``max_concurrency``.
    limits_poll: float = 1.0
    #: The permission the dashboard's views require.
    dashboard_permission: str = "scheduler.admin"
    #: The permission of the health probe ("": public).
    health_permission: str = ""
    #: The permission of the metrics (``None``: ``dashboard_permission``).
    metrics_permission: str | None = None
    #: ``HOST:PORT`` where a daemon serves /metrics and /health ("": nowhere).
    metrics_listen: str = ""

    @property
    def fanout(self) -> bool:
        """True when the broker can carry job events to every process."""
        return self.broker.kind != "sql"

    @property
    def publishes_events(self) -> bool:
        """True when a process running jobs publishes their events."""
        wanted = self.events_subscribe if self.events_publish is None else self.events_publish
        return self.fanout and wanted

    @property
    def message_age_limit(self) -> float:
        """``max_message_age``, or ``result_ttl`` when not set (0: no limit)."""
        return self.result_ttl if self.max_message_age is None else self.max_message_age

    @property
    def default_queue(self) -> str:
        return self.queues[0]

    @property
    def memory_store(self) -> bool:
        return self.jobstore_url is None

    def __repr__(self) -> str:  # safe for logs: no passwords
        store = "memory" if self.jobstore_url is None else mask_url(self.jobstore_url)
        return (
            f"<SchedulerSettings id={self.id!r} combined={self.combined} "
            f"queues={self.queues} broker={self.broker.masked()!r} jobstore={store!r}>"
        )


def posture_problem(settings: SchedulerSettings) -> str | None:
    """Why a process must not run jobs with these settings, or None.

    A broker other machines can reach, no ``scheduler.secret`` and no
    ``scheduler.allowed_modules``: anyone who can write to that broker can
    make the daemon call any importable function. ``scheduler.insecure =
    true`` says that is intended (see docs/security.rst).
    """
    if settings.insecure or settings.secret is not None or settings.allowed_modules:
        return None
    if broker_is_local(settings.broker):
        return None
    return (
        f"the broker {settings.broker.masked()} is reachable from other machines, and neither "
        f"{PREFIX}secret nor {PREFIX}allowed_modules is set: anyone who can write to the broker "
        f"could make this process call any importable function. Set {PREFIX}secret (the same "
        f"value in the web processes and the daemons) and {PREFIX}allowed_modules, or set "
        f"{PREFIX}insecure = true if that is what you want"
    )
