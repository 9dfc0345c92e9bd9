import dataclasses
import gc
from datetime import timedelta
from pathlib import Path

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.settings import (
    DEFAULT_QUEUE,
    KNOWN_KEYS,
    PREFIX,
    SETTINGS,
    SchedulerSettings,
    mask_url,
    parse_duration,
    parse_only,
    parse_settings,
)
from pyramid_scheduler.settings.reference import reference_rst
from pyramid_scheduler.settings.values import Choice, Duration, Whole


def test_defaults():
    settings = parse_settings({})
    assert settings.combined is False
    assert settings.queues == (DEFAULT_QUEUE,)
    assert settings.broker.kind == "sql"
    assert settings.jobstore_url.startswith("sqlite:///")
    assert settings.misfire_grace_time == 3600
    assert settings.timezone.utcoffset(None) == timedelta(0)
    assert settings.id == DEFAULT_QUEUE


def test_034_settings_keep_their_meaning():
    settings = parse_settings(
        {
            "scheduler.combined": "true",
            "scheduler.queues": "jobs reports",
            "scheduler.broker.url": "redis://127.0.0.1:6379/0",
            "scheduler.housekeeping": "24h",
            "scheduler.housekeeping.append": "gc:collect",
            "scheduler.jobstore.default.class": "apscheduler.jobstores.memory:MemoryJobStore",
            "scheduler.misfire_grace_time": "30",
            "scheduler.id": "main",
        }
    )
    assert settings.combined is True
    assert settings.queues == ("jobs", "reports")
    assert settings.default_queue == "jobs"
    assert settings.broker.kind == "kombu"
    assert settings.housekeeping == 86400
    assert settings.housekeeping_append == (gc.collect,)
    assert settings.memory_store
    assert settings.misfire_grace_time == 30
    assert settings.id == "main"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("kombu.transport.sqlalchemy:Transport+sqlite:///var/x.db", "sqlite:///var/x.db"),
        ("sqla+sqlite:///var/x.db", "sqlite:///var/x.db"),
        ("sqlalchemy+postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_034_broker_url_forms_map_onto_our_transport(url, expected):
    broker = parse_settings({"scheduler.broker.url": url}).broker
    assert broker.kind == "sql"
    assert broker.url == expected


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "amqp://guest:guest@h//", "pyamqp://h//", "memory://", "rediss://h/0"]
)
def test_kombu_urls_pass_through(url):
    assert parse_settings({"scheduler.broker.url": url}).broker.kind == "kombu"


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("scheduler.combined", "maybe", "scheduler.combined"),
        ("scheduler.queues", "ok bad/name", "scheduler.queues"),
        ("scheduler.queues", "a a", "without repeats"),
        ("scheduler.broker.url", "evil.module:Transport+sqlite:///x", "not passed through"),
        ("scheduler.broker.url", "ftp://x", "scheduler.broker.url"),
        ("scheduler.broker.timeout", "0", "scheduler.broker.timeout"),
        ("scheduler.broker.timeout", "soon", "duration"),
        ("scheduler.misfire_grace_time", "-5", "scheduler.misfire_grace_time"),
        ("scheduler.misfire_grace_time", "0.5s", "a whole number of seconds, at least 1"),
        ("scheduler.misfire_grace_time", "0", "a whole number of seconds, at least 1"),
        ("scheduler.housekeeping.append", "no.such.module:thing", "scheduler.housekeeping.append"),
        ("scheduler.timezone", "Mars/Olympus", "scheduler.timezone"),
        ("scheduler.serializer", "pickle", "pickle is no longer accepted"),
        ("scheduler.executor", "process", "scheduler.executor"),
        ("scheduler.executor.max_workers", "0", "scheduler.executor.max_workers"),
        ("scheduler.processes", "0", "scheduler.processes = '0': expected a whole number of at least 1"),
        ("scheduler.jobstore.url", "redis://x", "scheduler.jobstore.url"),
        ("scheduler.jobstore.default.class", "my.Store", "scheduler.jobstore.default.class"),
        ("scheduler.qeueus", "jobs", "Unknown setting scheduler.qeueus"),
        ("scheduler.apscheduler.timezone", "Europe/Paris", "use scheduler.timezone"),
        (
            "scheduler.apscheduler.job_defaults.coalesce",
            "false",
            "use scheduler.misfire_grace_time, scheduler.coalesce",
        ),
        ("scheduler.apscheduler.jobstores.default.url", "sqlite://", "use scheduler.jobstore.url"),
        ("scheduler.apscheduler.executors.default.max_workers", "3", "use scheduler.executor.max_workers"),
        ("scheduler.func_aliases", "app.jobs.old app.jobs.new", "scheduler.func_aliases"),
        ("scheduler.func_aliases", "app.jobs:old = app.jobs", "'old.module:function = new.module:function'"),
        ("scheduler.func_aliases", "a:x = a:y\na:x = a:z", "each old name once"),
        ("scheduler.func_aliases", "a:x = a:y\na:y = a:z", "a:y is itself renamed to a:z"),
        ("scheduler.dashboard.path", "/ops/", "scheduler.dashboard.path = '/ops/': expected a URL path"),
        ("scheduler.dashboard.path", "ops", "scheduler.dashboard.path"),
        ("scheduler.dashboard.permission", "scheduler admin", "a permission name (no blanks"),
        ("scheduler.dashboard.permission", "", "a permission name (no blanks, not empty)"),
        ("scheduler.metrics.listen", "9108", "scheduler.metrics.listen = '9108': expected HOST:PORT"),
    ],
)
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigurationError) as info:
        parse_settings({key: value})
    assert fragment in str(info.value)


def test_parse_only_reads_the_keys_it_is_given():
    raw = {
        "scheduler.processes": "3",
        "scheduler.shutdown_timeout": "1m",
        "scheduler.delegator": "no.such.module:fn",  # not imported: not asked for
    }
    settings = parse_only(raw, ("processes", "shutdown_timeout"))
    assert (settings.processes, settings.shutdown_timeout, settings.delegator) == (3, 60.0, None)
    assert parse_only({}, ("processes",)).processes == 1
    with pytest.raises(ConfigurationError, match="scheduler.processes = '-1'"):
        parse_only({"scheduler.processes": "-1"}, ("processes",))


def test_func_aliases():
    settings = parse_settings(
        {"scheduler.func_aliases": "\n app.jobs:old = app.tasks:new\napp.jobs:Cls.meth=app.jobs:other\n"}
    )
    assert settings.func_aliases == {"app.jobs:old": "app.tasks:new", "app.jobs:Cls.meth": "app.jobs:other"}
    assert parse_settings({}).func_aliases == {}


def test_passthrough_families():
    settings = parse_settings(
        {
            "scheduler.broker.transport_options.visibility_timeout": "120",
            "scheduler.broker.transport_options.polling_interval": "0.5",
            "scheduler.broker.transport_options.flag": "true",
            "scheduler.apscheduler.jobstore_retry_interval": "5",
        }
    )
    assert settings.broker_transport_options == {"visibility_timeout": 120, "polling_interval": 0.5, "flag": True}
    assert settings.apscheduler == {"apscheduler.jobstore_retry_interval": "5"}


@pytest.mark.parametrize(
    "value, seconds",
    [("90", 90), (90, 90), ("1.5s", 1.5), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("250ms", 0.25)],
)
def test_durations(value, seconds):
    assert parse_duration("x", value) == seconds


def test_secrets_never_in_repr():
    settings = parse_settings(
        {
            "scheduler.broker.url": "redis://:s3cret@h:6379/0",
            "scheduler.jobstore.url": "postgresql://app:hunter2@db/app",
        }
    )
    text = repr(settings)
    assert "s3cret" not in text and "hunter2" not in text
    assert "***" in text
    assert mask_url("amqp://guest:guest@h//") == "amqp://guest:***@h//"
    assert mask_url("redis://h/0") == "redis://h/0"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26379", "sentinel://:***@h1:26379;sentinel://:***@h2:26379"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        (
            "rediss://h/0?ssl_cert_reqs=required&ssl_keyfile_password=pw",
            "rediss://h/0?ssl_cert_reqs=required&ssl_keyfile_password=***",
        ),
        ("amqp://user:pw@host//", "amqp://user:***@host//"),
        ("amqp://u:pw@h1//;amqp://u:pw@h2//", "amqp://u:***@h1//;amqp://u:***@h2//"),
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:p@ss:w@h:5432/db?sslpassword=x", "postgresql://u:***@h:5432/db?sslpassword=***"),
        ("sqla+mysql://u:pw@h/db", "sqla+mysql://u:***@h/db"),
        ("redis://:pw@h", "redis://:***@h"),
        ("amqp://guest@h//", "amqp://guest@h//"),
        ("sqlite:////var/a@b.sqlite", "sqlite:////var/a@b.sqlite"),
    ],
)
def test_mask_url_masks_every_password(url, masked):
    assert mask_url(url) == masked


def test_settings_are_frozen():
    settings = SchedulerSettings()
    with pytest.raises(AttributeError):
        settings.combined = True  # type: ignore[misc]


@pytest.mark.parametrize("key", ["scheduler.jobstore.url", "scheduler.broker.url"])
def test_postgres_scheme_is_read_as_postgresql(key):
    settings = parse_settings({key: "postgres://scheduler:secret@db.example/jobs"})
    url = settings.jobstore_url if key.endswith("jobstore.url") else settings.broker.url
    assert url.startswith("postgresql") and url.endswith("://scheduler:secret@db.example/jobs")


def test_sql_url_without_its_driver_fails_at_include():
    with pytest.raises(ConfigurationError, match=r"scheduler.jobstore.url.*driver is installed"):
        parse_settings({"scheduler.jobstore.url": "mysql+mysqldb://u@h/db"})


# -- the one description: parser, known keys and reference from SETTINGS ----------------------------------


def test_each_documented_default_is_the_default():
    """The default the reference shows parses to the field's default."""
    defaults = SchedulerSettings()
    checked = 0
    for setting in SETTINGS:
        if setting.default is None:
            continue
        parsed = parse_settings({PREFIX + setting.key: setting.default})
        assert getattr(parsed, setting.attr) == getattr(defaults, setting.attr), setting.key
        checked += 1
    assert checked > 25


def test_every_field_is_set_by_a_setting():
    set_by_table = {setting.attr for setting in SETTINGS if setting.attr}
    assert {f.name for f in dataclasses.fields(SchedulerSettings)} == set_by_table
    assert KNOWN_KEYS == {setting.key for setting in SETTINGS} - {
        "broker.transport_options.*",
        "apscheduler.*",
        "priority.*",
    }


def test_the_reference_is_generated_from_the_table():
    """docs/settings.rst holds no hand-kept rows: the docs build renders
    ``reference_rst()`` in place of the directive, one row per setting."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "settings.rst").read_text(encoding="utf-8")
    assert text.count(".. scheduler-settings::") == 1
    assert "* - ``scheduler." not in text
    table = reference_rst()
    rows = [line for line in table.splitlines() if line.startswith("   * - ``scheduler.")]
    assert rows == [f"   * - ``scheduler.{setting.key}``" for setting in SETTINGS]
    assert "     - Whole number, at least 1" in table  # the kind says what its check takes


@pytest.mark.parametrize(
    "kind, value, expected",
    [
        (Whole(1), "0", "a whole number of at least 1"),
        (Duration(minimum=1), "0.5", "a duration of at least 1s"),
        (Duration(above_zero=True), "0", "a duration above zero"),
        (Choice(("a", "b"), "'a' or 'b'"), "c", "'a' or 'b'"),
    ],
)
def test_a_kind_refuses_what_it_does_not_describe(kind, value, expected):
    with pytest.raises(ConfigurationError, match=expected):
        kind.parse("x", value)
    assert kind.describe()
