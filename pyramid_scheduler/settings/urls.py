"""The URLs among the settings: the broker's and the job store's.

Reading them (0.3.4's forms of the broker URL, ``postgres://``, a driver that
must be installed, the client a Kombu transport needs), masking their
passwords for logs, and telling whether other machines can reach a broker.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from sqlalchemy.engine import make_url

from pyramid_scheduler.settings.values import PREFIX, bad

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
#: so that a missing client fails at the configuration's commit with the extra to
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


@dataclass(frozen=True)
class BrokerURL:
    """Where messages go: a Kombu URL, or a SQLAlchemy URL for our transport."""

    url: str
    #: ``"sql"`` for our SQL transport, else ``"kombu"``.
    kind: str

    def masked(self) -> str:
        return mask_url(self.url)


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
        raise bad(
            key,
            mask_url(value),
            "a broker URL such as redis://host:6379/0, amqp://user@host//, or "
            "sqlite:///path/to/file.sqlite (custom 'module:Transport+url' forms are "
            "not passed through)",
        )
    if base in KOMBU_SCHEMES:
        require_transport(key, value, base)
        return BrokerURL(url, "kombu")
    raise bad(
        key,
        mask_url(value),
        "a broker URL with one of the schemes " + ", ".join(KOMBU_SCHEMES + SQL_URL_SCHEMES),
    )


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
    raise bad(key, mask_url(url), f"a SQLAlchemy URL whose driver is installed ({error}){hint}")


@dataclass(frozen=True)
class BrokerAddress:
    """``scheduler.broker.url``: a Kombu URL or a SQLAlchemy URL (and 0.3.4's forms)."""

    def parse(self, key: str, value: Any) -> BrokerURL:
        return parse_broker_url(key, str(value))

    def describe(self) -> str:
        return "A broker URL"


#: What :class:`StoreAddress` reads as "keep jobs in memory".
MEMORY = "memory"


@dataclass(frozen=True)
class StoreAddress:
    """``scheduler.jobstore.url``: ``memory`` (read as ``None``) or a SQLAlchemy URL."""

    def parse(self, key: str, value: Any) -> str | None:
        url = str(value).strip()
        if url.lower() == MEMORY:
            return None
        scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
        if scheme not in SQL_URL_SCHEMES:
            raise bad(
                key,
                mask_url(url),
                "'memory' or a SQLAlchemy URL such as sqlite:///var/jobs.sqlite or postgresql://user@host/db",
            )
        return sql_url(key, url)

    def describe(self) -> str:
        return "``memory`` or a SQLAlchemy URL"


@dataclass(frozen=True)
class StoreClass:
    """``scheduler.jobstore.default.class`` (0.3.4): APScheduler's memory or SQL store."""

    def parse(self, key: str, value: Any) -> str:
        cls = str(value).strip()
        if cls not in MEMORY_STORE_CLASSES | SQL_STORE_CLASSES:
            raise bad(
                key,
                cls,
                "apscheduler.jobstores.memory:MemoryJobStore or apscheduler.jobstores.sqlalchemy:SQLAlchemyJobStore",
            )
        return cls

    def describe(self) -> str:
        return "An APScheduler job store class"
