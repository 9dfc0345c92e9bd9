"""Settings: every ``scheduler.*`` key parsed and checked once.

:func:`parse_settings` is called when the configuration is committed (in the
deferred action of ``config.include("pyramid_scheduler")``, so an
application may still change the settings after the include). It returns one
frozen :class:`SchedulerSettings`; any bad value raises
:class:`pyramid.exceptions.ConfigurationError` naming the key and the value.
Unknown ``scheduler.*`` keys are refused too: a typo is the commonest
configuration bug.

Each setting is described once, in :data:`~pyramid_scheduler.settings.spec.SETTINGS`
(key, field, kind of value, default, meaning): the parser below, the list of
known keys and the reference in docs/settings.rst all come from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.settings.model import DEFAULT_QUEUE, SchedulerSettings, posture_problem
from pyramid_scheduler.settings.spec import BY_ATTR, FAMILIES, KNOWN_KEYS, SETTINGS
from pyramid_scheduler.settings.urls import (
    DEFAULT_BROKER_URL,
    DEFAULT_JOBSTORE_URL,
    MEMORY_STORE_CLASSES,
    BrokerURL,
    broker_is_local,
    mask_url,
    parse_broker_url,
    require_transport,
    sql_url,
)
from pyramid_scheduler.settings.values import APS_OWNED, PREFIX, FamilyKind, Setting, bad, parse_duration
from pyramid_scheduler.store.tables import table_clash

__all__ = [
    "APS_OWNED",
    "DEFAULT_BROKER_URL",
    "DEFAULT_JOBSTORE_URL",
    "DEFAULT_QUEUE",
    "KNOWN_KEYS",
    "PREFIX",
    "SETTINGS",
    "BrokerURL",
    "SchedulerSettings",
    "Setting",
    "broker_is_local",
    "mask_url",
    "parse_broker_url",
    "parse_duration",
    "parse_only",
    "parse_settings",
    "posture_problem",
    "require_transport",
    "sql_url",
]


def parse_settings(settings: Mapping[str, Any], prefix: str = PREFIX) -> SchedulerSettings:
    """Parse the ``scheduler.*`` keys of a Pyramid settings mapping.

    :param settings: the application's settings (``registry.settings``).
    :param prefix: the key prefix, ``"scheduler."`` by default.
    :raises pyramid.exceptions.ConfigurationError: on a bad or unknown key.
    """
    raw = {k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)}
    free: dict[str, dict[str, Any]] = {setting.attr: {} for setting in FAMILIES.values()}
    for key, value in raw.items():
        family = next((FAMILIES[name] for name in FAMILIES if key.startswith(name)), None)
        if family is not None:
            kind = family.kind
            free[family.attr][kind.name(key) if isinstance(kind, FamilyKind) else key] = kind.parse(key, value)
        elif key not in KNOWN_KEYS:
            raise ConfigurationError(
                f"Unknown setting {prefix}{key} = {value!r}; the known ones are "
                "listed in the settings reference (docs/settings.rst)."
            )
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key in raw and not _blank(setting, raw[setting.key]):
            values[setting.key] = setting.kind.parse(setting.key, raw[setting.key])
    opts = {BY_ATTR[key]: value for key, value in values.items() if BY_ATTR[key]} | free
    queues = opts.get("queues", (DEFAULT_QUEUE,))
    opts.setdefault("id", ";".join(queues))
    if "jobstore.url" not in values and values.get("jobstore.default.class") in MEMORY_STORE_CLASSES:
        opts["jobstore_url"] = None
    parsed = SchedulerSettings(**opts)
    _check_together(parsed, raw, prefix)
    return parsed


def parse_only(settings: Mapping[str, Any], keys: Iterable[str], prefix: str = PREFIX) -> SchedulerSettings:
    """Only *keys* (``"processes"``) of a settings mapping, parsed and
    checked as :func:`parse_settings` does; every other field keeps its
    default. For ``pscheduler``'s supervisor, which reads what it needs
    without importing what other settings name.

    :raises pyramid.exceptions.ConfigurationError: on a bad value of one of *keys*.
    """
    by_key = {setting.key: setting for setting in SETTINGS}
    values: dict[str, Any] = {}
    for key in keys:
        setting = by_key[key]
        value = settings.get(prefix + key)
        if value is not None and not _blank(setting, value):
            values[setting.attr] = setting.kind.parse(key, value)
    return SchedulerSettings(**values)


def _blank(setting: Setting, value: Any) -> bool:
    return setting.blank_is_default and isinstance(value, str) and not value.strip()


def _check_together(parsed: SchedulerSettings, raw: Mapping[str, Any], prefix: str) -> None:
    """The checks that involve several settings."""
    clash = table_clash(parsed.jobstore_tablename_prefix, parsed.queues)
    if clash:
        raise bad(
            "queues",
            raw.get("queues"),
            f"queue names a database can tell apart: {clash[0]} and {clash[1]} would share one job "
            "table (names that differ only in case, or too long)",
        )
    for queue in parsed.priorities:
        if queue not in parsed.queues:
            raise bad(
                f"priority.{queue}", raw.get(f"priority.{queue}"), f"a queue of {prefix}queues: {queue!r} is not one"
            )
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
