"""Settings: every ``scheduler.*`` key parsed and checked once.

:func:`parse_settings` is called at ``config.include`` time (in a deferred
action, so an application may still change the settings after the include). It
returns one frozen :class:`SchedulerSettings`; any bad value raises
:class:`pyramid.exceptions.ConfigurationError` naming the key and the value.
Unknown ``scheduler.*`` keys are refused too: a typo is the commonest
configuration bug.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pyramid.exceptions import ConfigurationError
from pyramid.path import DottedNameResolver
from pyramid.settings import asbool, aslist
from sqlalchemy.engine import make_url

from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.store.tables import table_clash
from pyramid_scheduler.wire.options import CATCH_UP_POLICIES

log = get_logger(__name__)

PREFIX = "scheduler."

#: The queue used when ``scheduler.queues`` is empty (as in 0.3.4).
DEFAULT_QUEUE = "default"

DEFAULT_BROKER_URL = "sqlite:///var/scheduler-broker.sqlite"
DEFAULT_JOBSTORE_URL = "sqlite:///var/scheduler-jobs.sqlite"

#: Values of ``scheduler.jobstore.default.class`` (0.3.4) that mean "keep jobs
#: in memory only".
MEMORY_STORE_CLASSES = {
    "memory",
    "apscheduler.jobstores.memory:MemoryJobStore",
    "apscheduler.jobstores.memory.MemoryJobStore",
    "apscheduler.jobstores.ram_store:RAMJobStore",
    "apscheduler.jobstores.ram_store.RAMJobStore",
}
SQL_STORE_CLASSES = {
    "sqlalchemy",
    "apscheduler.jobstores.sqlalchemy:SQLAlchemyJobStore",
    "apscheduler.jobstores.sqlalchemy.SQLAlchemyJobStore",
    "apscheduler.jobstores.sqlalchemy_store:SQLAlchemyJobStore",
}

#: Broker URL prefixes that name Kombu's own SQLAlchemy transport (0.3.4 INI
#: files used the first). They are mapped onto our SQL transport, never passed
#: through to Kombu (which would import whatever module the prefix names).
SQL_TRANSPORT_PREFIXES = (
    "kombu.transport.sqlalchemy:Transport+",
    "kombu.transport.sqlalchemy.Transport+",
    "sqlalchemy+",
    "sqla+",
)
SQL_URL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")
KOMBU_SCHEMES = (
    "redis",
    "rediss",
    "amqp",
    "amqps",
    "pyamqp",
    "librabbitmq",
    "memory",
    "sentinel",
)
#: What a Kombu URL scheme needs installed: the modules imported, and the
#: extra of this package that installs them. Checked when the setting is read,
#: so that a missing client fails at ``config.include`` with the extra to
#: install, not in the first publish or at the daemon's start.
TRANSPORT_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    **dict.fromkeys(("redis", "rediss", "sentinel"), (("redis", "kombu.transport.redis"), "redis")),
    **dict.fromkeys(("amqp", "amqps", "pyamqp"), (("amqp", "kombu.transport.pyamqp"), "amqp")),
    "librabbitmq": (("librabbitmq",), "amqp"),
}
#: The DB-API drivers SQLAlchemy 2 can use for a URL without ``+driver``, in
#: the order tried (its own default first: psycopg2 in 2.0, psycopg 3 in 2.1),
#: and the extra of this package that installs one.
SQL_DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "postgresql": (("", "psycopg", "psycopg2"), "postgresql"),
}

_QUEUE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: APScheduler options pyramid_scheduler sets itself, and what to use instead.
APS_OWNED = {
    "jobstores": f"{PREFIX}jobstore.url",
    "executors": f"{PREFIX}executor.max_workers",
    "job_defaults": f"{PREFIX}misfire_grace_time, {PREFIX}coalesce or the add_*_job options",
    "timezone": f"{PREFIX}timezone",
}

#: Keys this module understands, beside the ``apscheduler.*`` and
#: ``broker.transport_options.*`` pass-through families.
KNOWN_KEYS = frozenset(
    {
        "combined",
        "queues",
        "id",
        "delegator",
        "serializer",
        "timezone",
        "broker.url",
        "broker.timeout",
        "broker.pool_limit",
        "broker.prefetch",
        "broker.queue_prefix",
        "jobstore.url",
        "jobstore.default.class",
        "jobstore.tablename_prefix",
        "sqlite.wal",
        "housekeeping",
        "housekeeping.append",
        "misfire_grace_time",
        "coalesce",
        "executor",
        "executor.max_workers",
        "shutdown_timeout",
        "lease.ttl",
        "result_ttl",
        "max_message_size",
        "secret",
        "allowed_modules",
        "interrupted",
        "func_aliases",
        "transactional",
        "events.subscribe",
        "events.publish",
        "testing.eager",
        "catch_up",
        "catch_up_limit",
        "insecure",
        "dead_letters.max",
        "max_message_age",
    }
)


@dataclass(frozen=True)
class BrokerURL:
    """Where messages go: a Kombu URL, or a SQLAlchemy URL for our transport."""

    url: str
    #: ``"sql"`` for our SQL transport, else ``"kombu"``.
    kind: str

    def masked(self) -> str:
        return mask_url(self.url)


@dataclass(frozen=True)
class SchedulerSettings:
    """Every ``scheduler.*`` setting, parsed and checked.

    Build one with :func:`parse_settings`; tests may build one directly with
    keyword arguments.
    """

    combined: bool = False
    #: Hold add_*_job/cancel_job until the current transaction commits.
    transactional: bool = True
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
    lease_ttl: float = 15.0
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
    #: :mod:`pyramid_scheduler.testing` runs due jobs as soon as they are added.
    testing_eager: bool = False
    apscheduler: Mapping[str, Any] = field(default_factory=dict)

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


#: Query parameters whose values are masked in URLs written to logs.
_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;#]*(?:pass|pwd|secret|token|key|auth|credential)[^=&;#]*=)([^&;#]*)")
#: ``scheme://user:password@``: the password runs to the last ``@`` before the query.
_USERINFO = re.compile(r"(?s)([A-Za-z][A-Za-z0-9+.\-]*://)([^:@/;?#]*):([^?#]*)@")


def mask_url(url: str) -> str:
    """Return *url* with every password replaced by ``***``: in the user
    part of each URL (``amqp://user:pw@host``,
    ``postgresql+psycopg://u:pw@h/db``, ``sentinel://:pw@h1;sentinel://:pw@h2``
    and other ``;``-separated failover lists) and in query parameters such as
    ``?password=`` or ``?ssl_keyfile_password=``."""
    masked = ";".join(_USERINFO.sub(r"\1\2:***@", part) for part in url.split(";"))
    return _SECRET_PARAM.sub(r"\1***", masked)


def broker_is_local(broker: BrokerURL) -> bool:
    """True when only this machine can reach the broker: an SQLite file, an
    in-process ``memory://`` one, a Unix socket, or hosts on loopback
    (``localhost``, ``127.0.0.0/8``, ``::1``). Names are not resolved."""
    url = broker.url
    if broker.kind == "sql":
        parsed = make_url(url)
        return parsed.get_backend_name() == "sqlite" or _loopback(parsed.host)
    if url.startswith(("memory://", "redis+socket://", "socket://")):
        return True
    for part in url.split(";"):
        try:
            host = urlsplit(part.strip()).hostname
        except ValueError:
            return False
        if not _loopback(host):
            return False
    return True


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":  # Kombu's and SQLAlchemy's default host
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def parse_duration(key: str, value: Any) -> float:
    """Seconds from ``90``, ``"90"``, ``"1.5s"``, ``"30m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise _bad(key, value, "a duration such as 30, 30s, 15m, 24h or 7d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise _bad(key, value, "a duration of zero or more")
    return seconds


def parse_broker_url(key: str, value: str) -> BrokerURL:
    """Classify a broker URL; 0.3.4's SQLAlchemy forms map onto our transport."""
    url = value.strip()
    for prefix in SQL_TRANSPORT_PREFIXES:
        if url.startswith(prefix):
            url = url[len(prefix) :]
            break
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base in SQL_URL_SCHEMES:
        return BrokerURL(sql_url(key, url), "sql")
    if "+" in scheme and base not in KOMBU_SCHEMES:
        raise _bad(
            key,
            mask_url(value),
            "a broker URL such as redis://host:6379/0, amqp://user@host//, or "
            "sqlite:///path/to/file.sqlite (custom 'module:Transport+url' forms are "
            "not passed through)",
        )
    if base in KOMBU_SCHEMES:
        require_transport(key, value, base)
        return BrokerURL(url, "kombu")
    raise _bad(
        key,
        mask_url(value),
        "a broker URL with one of the schemes " + ", ".join(KOMBU_SCHEMES + SQL_URL_SCHEMES),
    )


def _bad(key: str, value: Any, expected: str) -> ConfigurationError:
    return ConfigurationError(f"Invalid setting {PREFIX}{key} = {value!r}: expected {expected}.")


def _as_int(key: str, value: Any, minimum: int = 0) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _bad(key, value, "a whole number") from None
    if number < minimum:
        raise _bad(key, value, f"a whole number of at least {minimum}")
    return number


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"}:
        raise _bad(key, value, "true or false")
    return asbool(text)


def _resolve(key: str, value: Any) -> Callable[..., Any]:
    if callable(value):
        return value
    try:
        obj = DottedNameResolver().resolve(str(value).strip())
    except (ImportError, ValueError, AttributeError) as exc:
        raise _bad(key, value, f"an importable dotted name ({exc})") from exc
    if not callable(obj):
        raise _bad(key, value, "the dotted name of a callable")
    return obj  # type: ignore[no-any-return]


def _coerce_option(value: str) -> Any:
    text = value.strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_settings(settings: Mapping[str, Any], prefix: str = PREFIX) -> SchedulerSettings:
    """Parse the ``scheduler.*`` keys of a Pyramid settings mapping.

    :param settings: the application's settings (``registry.settings``).
    :param prefix: the key prefix, ``"scheduler."`` by default.
    :raises pyramid.exceptions.ConfigurationError: on a bad or unknown key.
    """
    raw = {k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)}
    opts: dict[str, Any] = {}
    transport_options: dict[str, Any] = {}
    aps: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("broker.transport_options."):
            transport_options[key[len("broker.transport_options.") :]] = _coerce_option(str(value))
        elif key.startswith("apscheduler."):
            name = key[len("apscheduler.") :]
            for taken, instead in APS_OWNED.items():
                if name == taken or name.startswith(taken + "."):
                    raise _bad(key, value, f"nothing: pyramid_scheduler sets APScheduler's {taken}; use {instead}")
            aps[key] = value
        elif key not in KNOWN_KEYS:
            raise ConfigurationError(
                f"Unknown setting {prefix}{key} = {value!r}; the known ones are "
                "listed in the settings reference (docs/settings.rst)."
            )

    if "combined" in raw:
        opts["combined"] = _as_bool("combined", raw["combined"])
    if "sqlite.wal" in raw:
        opts["sqlite_wal"] = _as_bool("sqlite.wal", raw["sqlite.wal"])
    if "transactional" in raw:
        opts["transactional"] = _as_bool("transactional", raw["transactional"])
    if "queues" in raw:
        queues = tuple(aslist(str(raw["queues"])))
        for name in queues:
            if not _QUEUE_RE.match(name):
                raise _bad(
                    "queues", raw["queues"], "space-separated queue names made of letters, digits, '_', '.' and '-'"
                )
        if len(set(queues)) != len(queues):
            raise _bad("queues", raw["queues"], "queue names without repeats")
        if queues:
            opts["queues"] = queues
    queues = opts.get("queues", (DEFAULT_QUEUE,))
    opts["id"] = str(raw.get("id") or ";".join(queues))
    if "broker.url" in raw:
        opts["broker"] = parse_broker_url("broker.url", str(raw["broker.url"]))
    opts["broker_transport_options"] = transport_options
    for key, attr, minimum in (
        ("broker.pool_limit", "broker_pool_limit", 1),
        ("broker.prefetch", "broker_prefetch", 1),
        ("executor.max_workers", "max_workers", 1),
        ("max_message_size", "max_message_size", 64),
        ("catch_up_limit", "catch_up_limit", 1),
        ("dead_letters.max", "dead_letters_max", 1),
    ):
        if key in raw:
            opts[attr] = _as_int(key, raw[key], minimum)
    if "broker.queue_prefix" in raw:
        opts["broker_queue_prefix"] = str(raw["broker.queue_prefix"]).strip()
    for key, attr in (
        ("broker.timeout", "broker_timeout"),
        ("housekeeping", "housekeeping"),
        ("misfire_grace_time", "misfire_grace_time"),
        ("shutdown_timeout", "shutdown_timeout"),
        ("lease.ttl", "lease_ttl"),
        ("result_ttl", "result_ttl"),
        ("max_message_age", "max_message_age"),
    ):
        if key in raw:
            opts[attr] = parse_duration(key, raw[key])
    if "misfire_grace_time" in opts:
        grace = opts["misfire_grace_time"]
        if grace < 1 or not float(grace).is_integer():
            raise _bad("misfire_grace_time", raw["misfire_grace_time"], "a whole number of seconds, at least 1")
        opts["misfire_grace_time"] = int(grace)
    if opts.get("broker_timeout", 1.0) <= 0:
        raise _bad("broker.timeout", raw["broker.timeout"], "a duration above zero")
    if opts.get("lease_ttl", 15.0) < 1:
        raise _bad("lease.ttl", raw["lease.ttl"], "a duration of at least 1s")
    if opts.get("housekeeping", 1.0) <= 0:
        raise _bad("housekeeping", raw["housekeeping"], "a duration above zero")
    if "coalesce" in raw:
        opts["coalesce"] = _as_bool("coalesce", raw["coalesce"])
    for key, attr in (
        ("events.subscribe", "events_subscribe"),
        ("events.publish", "events_publish"),
        ("testing.eager", "testing_eager"),
        ("insecure", "insecure"),
    ):
        if key in raw:
            opts[attr] = _as_bool(key, raw[key])
    if "catch_up" in raw:
        opts["catch_up"] = _parse_catch_up(raw["catch_up"])
    if "housekeeping.append" in raw:
        opts["housekeeping_append"] = tuple(
            _resolve("housekeeping.append", name) for name in aslist(str(raw["housekeeping.append"]))
        )
    if raw.get("delegator"):
        opts["delegator"] = _resolve("delegator", raw["delegator"])
    if "timezone" in raw:
        try:
            opts["timezone"] = ZoneInfo(str(raw["timezone"]).strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise _bad("timezone", raw["timezone"], "an IANA zone name such as UTC or Europe/Paris") from None
    if "executor" in raw:
        executor = str(raw["executor"]).strip()
        if executor not in {"thread", "threadpool", "default"}:
            raise _bad(
                "executor",
                executor,
                "'thread' (jobs need the application's registry, which a process pool cannot share)",
            )
        opts["executor"] = "thread"
    if "serializer" in raw:
        serializer = str(raw["serializer"]).strip().lower()
        if serializer != "json":
            raise _bad(
                "serializer",
                raw["serializer"],
                "'json' (pickle is no longer accepted on the wire: a pickle message "
                "from the broker can run any code in the daemon)",
            )
        opts["serializer"] = serializer
    if "interrupted" in raw:
        interrupted = str(raw["interrupted"]).strip().lower()
        if interrupted not in {"record", "rerun"}:
            raise _bad(
                "interrupted",
                raw["interrupted"],
                "'record' (a run cut short by a crash is reported interrupted, never run twice) "
                "or 'rerun' (it is run once more after the restart)",
            )
        opts["interrupted"] = interrupted
    if raw.get("secret"):
        secret = str(raw["secret"]).strip()
        if len(secret) < 16:
            raise ConfigurationError(
                f"Invalid setting {prefix}secret: expected at least 16 characters "
                "(for example the output of: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        opts["secret"] = secret.encode("utf-8")
    if "allowed_modules" in raw:
        modules = tuple(aslist(str(raw["allowed_modules"])))
        for name in modules:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", name):
                raise _bad("allowed_modules", raw["allowed_modules"], "space-separated module names")
        opts["allowed_modules"] = modules
    if "func_aliases" in raw:
        opts["func_aliases"] = _parse_aliases(str(raw["func_aliases"]))
    opts["jobstore_url"] = _parse_jobstore(raw)
    if "jobstore.tablename_prefix" in raw:
        prefix_value = str(raw["jobstore.tablename_prefix"]).strip()
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", prefix_value):
            raise _bad("jobstore.tablename_prefix", prefix_value, "an SQL identifier")
        opts["jobstore_tablename_prefix"] = prefix_value
    clash = table_clash(opts.get("jobstore_tablename_prefix", "pyramid_scheduler_"), queues)
    if clash:
        raise _bad(
            "queues",
            raw.get("queues"),
            f"queue names a database can tell apart: {clash[0]} and "
            f"{clash[1]} would share one job table (names that differ only in case, or too long)",
        )
    opts["apscheduler"] = aps
    parsed = SchedulerSettings(**opts)
    if parsed.events_subscribe and not parsed.fanout:
        raise ConfigurationError(
            f"Invalid setting {prefix}events.subscribe = true: job events reach other processes "
            f"through a fan-out exchange, which the SQL broker ({prefix}broker.url = "
            f"{parsed.broker.masked()!r}) does not have; use a Redis or RabbitMQ broker, or "
            "read job records with scheduler.get_job() instead."
        )
    if parsed.events_publish and not parsed.fanout:
        raise ConfigurationError(
            f"Invalid setting {prefix}events.publish = true: the SQL broker ({prefix}broker.url = "
            f"{parsed.broker.masked()!r}) has no fan-out exchange to publish job events on; use a "
            "Redis or RabbitMQ broker."
        )
    return parsed


_FUNC_REF = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:"
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)


def _parse_catch_up(value: Any) -> str:
    policy = str(value).strip().lower()
    if policy not in CATCH_UP_POLICIES:
        raise _bad(
            "catch_up",
            value,
            "'skip' (overdue runs past misfire_grace_time are not run), 'once' (one run "
            "for all overdue runs) or 'all' (every overdue run, up to scheduler.catch_up_limit)",
        )
    return policy


def _parse_aliases(value: str) -> dict[str, str]:
    """``old.module:func = new.module:func``, one per line."""
    aliases: dict[str, str] = {}
    for line in filter(None, (line.strip() for line in value.splitlines())):
        old, eq, new = (part.strip() for part in line.partition("="))
        if not (eq and _FUNC_REF.match(old) and _FUNC_REF.match(new)):
            raise _bad("func_aliases", line, "lines of 'old.module:function = new.module:function'")
        if old in aliases or old == new:
            raise _bad("func_aliases", line, "each old name once, mapped to another name")
        aliases[old] = new
    for old, new in aliases.items():
        if new in aliases:
            raise _bad("func_aliases", f"{old} = {new}", f"the final name: {new} is itself renamed to {aliases[new]}")
    return aliases


def _parse_jobstore(raw: Mapping[str, Any]) -> str | None:
    cls = str(raw.get("jobstore.default.class", "")).strip()
    url = str(raw.get("jobstore.url", "")).strip()
    if cls and cls not in MEMORY_STORE_CLASSES | SQL_STORE_CLASSES:
        raise _bad(
            "jobstore.default.class",
            cls,
            "apscheduler.jobstores.memory:MemoryJobStore or apscheduler.jobstores.sqlalchemy:SQLAlchemyJobStore",
        )
    if url.lower() == "memory" or (cls in MEMORY_STORE_CLASSES and not url):
        return None
    if not url:
        return DEFAULT_JOBSTORE_URL
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in SQL_URL_SCHEMES:
        raise _bad(
            "jobstore.url",
            mask_url(url),
            "'memory' or a SQLAlchemy URL such as sqlite:///var/jobs.sqlite or postgresql://user@host/db",
        )
    return sql_url("jobstore.url", url)


def require_transport(key: str, value: str, scheme: str) -> None:
    """Import what Kombu's transport for *scheme* needs, or raise naming the
    extra that installs it."""
    modules, extra = TRANSPORT_NEEDS.get(scheme, ((), ""))
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a transport broken by a missing client
            raise ConfigurationError(
                f"Invalid setting {PREFIX}{key} = {mask_url(value)!r}: a {scheme}:// broker needs "
                f"Kombu's {scheme} transport and its client library; install them with "
                f"pip install 'pyramid_scheduler[{extra}]' ({module} could not be imported: {exc})"
            ) from exc


def sql_url(key: str, url: str) -> str:
    """A SQLAlchemy URL SQLAlchemy 2 can load, its driver installed.

    ``postgres://`` (Heroku's and older URLs) becomes ``postgresql://``; a
    PostgreSQL URL without a driver uses whichever of SQLAlchemy's default
    (psycopg2 in 2.0, psycopg 3 in 2.1), psycopg 3 and psycopg2 is installed,
    in that order.
    """
    scheme, sep, rest = url.partition("://")
    base, plus, driver = scheme.partition("+")
    if base == "postgres":
        base = "postgresql"
    drivers, extra = SQL_DRIVERS.get(base, (("",), ""))
    candidates = (
        [f"{base}{plus}{driver}{sep}{rest}"]
        if plus
        else [f"{base}{'+' if name else ''}{name}{sep}{rest}" for name in drivers]
    )
    error: Exception | None = None
    for candidate in candidates:
        try:
            make_url(candidate).get_dialect().import_dbapi()
        except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError
            error = error or exc
            continue
        return candidate
    hint = f"; install one with pip install 'pyramid_scheduler[{extra}]'" if extra else ""
    raise _bad(key, mask_url(url), f"a SQLAlchemy URL whose driver is installed ({error}){hint}")
