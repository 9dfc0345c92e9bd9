"""Schedules: the calendar and delay forms of ``add_*_job``, and the preview.

The producer (:mod:`pyramid_scheduler.web.proxy`) turns the forms users know from
other schedulers into the APScheduler 3 trigger fields of the wire format
(:mod:`pyramid_scheduler.triggers.build`): ``weekdays``/``monthdays`` with a
``time_of_day`` become cron fields, a ``delay`` becomes a date. Nothing new
travels on the wire, so the daemon builds the same trigger the producer
checked (:mod:`pyramid_scheduler.triggers.preview` lists its next runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.triggers.build import (
    CRON_FIELDS,
    INTERVAL_FIELDS,
    build_trigger,
    next_fire_time,
    to_datetime,
    to_zone,
    trigger_spec,
)

#: ISO 8601 weekday numbers (1 = Monday ... 7 = Sunday) -> APScheduler's names.
WEEKDAYS = {1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat", 7: "sun"}
#: The keywords of a delay, and how many seconds one unit is.
DELAY_UNITS = {"delay": 1.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0, "millis": 0.001}
#: The calendar keywords of ``add_cron_job``.
CALENDAR_ARGS = ("weekdays", "monthdays", "time_of_day")
#: Cron fields each calendar keyword replaces.
_REPLACES = {"weekdays": ("day_of_week",), "monthdays": ("day",), "time_of_day": ("hour", "minute", "second")}


def _listed(value: Any, where: str) -> list[Any]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise InvalidJob(f"{where}: expected a list, got {value!r}")
    items = list(value)
    if not items:
        raise InvalidJob(f"{where}: expected at least one day, got an empty list")
    return items


def weekday_names(weekdays: Any) -> str:
    """APScheduler's ``day_of_week`` for ISO weekday numbers (1 = Monday ...
    7 = Sunday) or names (``"mon"`` ... ``"sun"``)."""
    names = []
    for day in _listed(weekdays, "weekdays"):
        if isinstance(day, str) and day.strip().lower()[:3] in WEEKDAYS.values():
            names.append(day.strip().lower()[:3])
        elif isinstance(day, int) and not isinstance(day, bool) and day in WEEKDAYS:
            names.append(WEEKDAYS[day])
        else:
            raise InvalidJob(
                f"weekdays: {day!r} is not a day of the week; use ISO numbers "
                "1 (Monday) to 7 (Sunday) or names 'mon' to 'sun'"
            )
    return ",".join(dict.fromkeys(names))


def monthday_numbers(monthdays: Any) -> str:
    """APScheduler's ``day`` for days of the month (1 to 31, or ``"last"``)."""
    days = []
    for day in _listed(monthdays, "monthdays"):
        if day == "last" or (isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 31):
            days.append(str(day))
        else:
            raise InvalidJob(f"monthdays: {day!r} is not a day of the month; use 1 to 31 or 'last'")
    return ",".join(dict.fromkeys(days))


def clock_time(value: Any) -> tuple[int, int, int]:
    """(hour, minute, second) from ``(7, 30)``, ``(7, 30, 15)``, ``"07:30"``
    or a :class:`datetime.time`."""
    if isinstance(value, time):
        parts: list[Any] = [value.hour, value.minute, value.second]
    elif isinstance(value, str):
        try:
            parts = [int(part) for part in value.strip().split(":")]
        except ValueError:
            parts = []
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        parts = []
    if not 2 <= len(parts) <= 3 or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        raise InvalidJob(
            f"time_of_day: expected (hour, minute), (hour, minute, second), 'HH:MM' or a datetime.time, got {value!r}"
        )
    hour, minute, second = (*parts, 0)[:3]
    if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 59):
        raise InvalidJob(f"time_of_day: {value!r} is not a time of day (00:00:00 to 23:59:59)")
    return hour, minute, second


def calendar_fields(options: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Replace ``weekdays``, ``monthdays`` and ``time_of_day`` (popped from
    *options*) with the cron *fields* they mean; *fields* unchanged if none
    is given.

    Both ``weekdays`` and ``monthdays``: a day must be both (APScheduler's
    rule; crontab's is either). The time of day defaults to midnight.
    """
    given = {name: options.pop(name) for name in CALENDAR_ARGS if options.get(name) is not None}
    for name in CALENDAR_ARGS:
        options.pop(name, None)
    if not given:
        return fields
    for name in given:
        clash = [field for field in _REPLACES[name] if fields.get(field) is not None]
        if clash:
            raise InvalidJob(f"{name} and {', '.join(clash)}: give one or the other")
    fields = dict(fields)
    if "weekdays" in given:
        fields["day_of_week"] = weekday_names(given["weekdays"])
    if "monthdays" in given:
        fields["day"] = monthday_numbers(given["monthdays"])
    fields["hour"], fields["minute"], fields["second"] = clock_time(given.get("time_of_day", (0, 0)))
    return fields


def pop_delay(options: dict[str, Any]) -> tuple[list[str], timedelta | None]:
    """The delay given as ``delay`` (seconds or a timedelta), ``days``,
    ``hours``, ``minutes``, ``seconds`` and/or ``millis`` (added up), popped
    from *options*: (the keywords given, the delay or ``None``)."""
    names = [name for name in DELAY_UNITS if options.get(name) is not None]
    total = timedelta(0)
    for name in DELAY_UNITS:
        value = options.pop(name, None)
        if value is None:
            continue
        if name == "delay" and isinstance(value, timedelta):
            value = value.total_seconds()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidJob(f"{name}: expected a number of zero or more, got {value!r}")
        try:
            total += timedelta(seconds=value * DELAY_UNITS[name])
        except OverflowError as exc:
            raise InvalidJob(f"{name}: {value!r} is too long a delay") from exc
    return names, (total if names else None)


# -- add_*_job arguments -> wire trigger spec -----------------------------------------


def job_zone(options: dict[str, Any], default_tz: tzinfo) -> tzinfo:
    """The job's ``timezone`` option as a tzinfo (stored back in *options*),
    else *default_tz* (``scheduler.timezone``)."""
    if options.get("timezone") is not None:
        options["timezone"] = to_zone(options["timezone"])
        return options["timezone"]  # type: ignore[no-any-return]
    return default_tz


def date_args(options: dict[str, Any], date: Any, default_tz: tzinfo, now: datetime | None = None) -> dict[str, Any]:
    """``run_date`` from *date* or from a delay (from *now*) popped from *options*."""
    tz = job_zone(options, default_tz)
    names, delay = pop_delay(options)
    if date is not None and delay is not None:
        raise InvalidJob(f"date and {', '.join(names)}: give a date or a delay, not both")
    if delay is not None:
        # Kept in the spec: reschedule_job(id) applies the same delay again.
        return {"run_date": (_now(now) + delay).astimezone(tz), "delay": delay.total_seconds()}
    if date is None:
        raise InvalidJob(
            "date: required, unless a delay is given (delay=, days=, hours=, minutes=, seconds= or millis=)"
        )
    return {"run_date": to_datetime(date, tz, "date")}


def interval_args(
    options: dict[str, Any], start_date: Any, fields: dict[str, Any], default_tz: tzinfo, now: datetime | None = None
) -> dict[str, Any]:
    """An interval counts from *start_date*, or from now; with the option
    ``fixed_delay=True`` (popped from *options*), each run after the first
    is due an interval after the previous run ended."""
    tz = job_zone(options, default_tz)
    start = to_datetime(start_date, tz, "start_date") if start_date is not None else _now(now)
    fixed_delay = options.pop("fixed_delay", False)
    if not isinstance(fixed_delay, bool):
        raise InvalidJob(f"fixed_delay: expected True or False, got {fixed_delay!r}")
    return {"start_date": start, **fields, "fixed_delay": fixed_delay}


def cron_args(options: dict[str, Any], start_date: Any, fields: dict[str, Any], default_tz: tzinfo) -> dict[str, Any]:
    """The cron *fields*, or ``crontab``, or the calendar keywords, from *options*."""
    tz = job_zone(options, default_tz)
    start = to_datetime(start_date, tz, "start_date") if start_date is not None else None
    crontab = options.pop("crontab", None)
    if crontab is None:
        return {"start_date": start, **calendar_fields(options, fields)}
    if any(value is not None for value in fields.values()) or any(
        options.get(name) is not None for name in CALENDAR_ARGS
    ):
        raise InvalidJob("crontab: give either crontab or the cron fields, not both")
    if not isinstance(crontab, str):
        raise InvalidJob(f"crontab: expected a string such as '30 7 * * mon', got {crontab!r}")
    return {"start_date": start, "crontab": crontab}


def schedule_args(
    trigger: str | None, options: dict[str, Any], default_tz: tzinfo, now: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    """The kind and trigger arguments of a schedule given as ``add_*_job``
    arguments in *options* (``reschedule_job`` and ``preview``); ``cron=`` is
    ``crontab=``, and *trigger* may be left out when the arguments say it."""
    if "cron" in options:
        if trigger not in (None, "cron") or options.get("crontab") is not None:
            raise InvalidJob("cron: a crontab string, for a cron schedule; give cron= or crontab=")
        options["crontab"] = options.pop("cron")
        trigger = "cron"
    trigger = schedule_kind(trigger, options)
    if trigger == "date":
        return trigger, date_args(options, options.pop("date", None), default_tz, now)
    if trigger == "interval":
        fields = {name: options.pop(name, 0) for name in INTERVAL_FIELDS}
        return trigger, interval_args(options, options.pop("start_date", None), fields, default_tz, now)
    fields = {name: options.pop(name, None) for name in CRON_FIELDS}
    return trigger, cron_args(options, options.pop("start_date", None), fields, default_tz)


#: The schedule kinds ``add_*_job`` offers, as ``trigger=`` names them.
KINDS = ("date", "interval", "cron")
#: The arguments that describe a schedule of each kind (besides the ones all
#: kinds take: ``start_date``, ``end_date``, ``timezone``, ``jitter``).
KIND_ARGS = {
    "cron": frozenset({"cron", "crontab", *CALENDAR_ARGS, *CRON_FIELDS}),
    "interval": frozenset({*INTERVAL_FIELDS, "fixed_delay"}),
    "date": frozenset({"date"}),
}


def schedule_kind(trigger: str | None, params: Mapping[str, Any], delays: bool = True) -> str:
    """The kind of schedule: *trigger* if given, else the one kind that
    takes every schedule argument given in *params* (those not ``None``).

    The one rule of ``reschedule_job``, ``preview`` and the declared jobs of
    :mod:`pyramid_scheduler.web.declare`. With *delays* a delay (``delay``,
    ``millis``, ``days`` ... ``seconds``) describes a date, so ``hours=2``
    alone could be a delay or an interval and is refused, and ``weeks=2``
    is an interval; a declaration (no *delays*: a delay from the moment the
    application starts means nothing) reads ``minutes=10`` as an interval.

    :raises InvalidJob: *trigger* is not a kind, or the arguments name no
        kind or more than one.
    """
    if trigger is not None:
        if trigger not in KINDS:
            raise InvalidJob(f"trigger: expected 'date', 'interval' or 'cron', got {trigger!r}")
        return trigger
    takes = dict(KIND_ARGS, date=KIND_ARGS["date"] | set(DELAY_UNITS)) if delays else KIND_ARGS
    words = frozenset().union(*takes.values())
    given = {name for name, value in params.items() if value is not None and name in words}
    kinds = [kind for kind in KINDS if given and given <= takes[kind]]
    if len(kinds) == 1:
        return kinds[0]
    delay = " or a delay (delay=, millis=, days=, ...)" if delays else ""
    raise InvalidJob(
        "trigger: say which schedule these arguments describe: give trigger='date', 'interval' or 'cron', "
        "or the arguments of exactly one: cron= or crontab=, the cron fields (minute=, hour=, ...) or "
        f"weekdays=/monthdays=/time_of_day=; weeks=/days=/hours=/minutes=/seconds=; or date={delay} "
        f"(got {', '.join(sorted(given)) or 'none'}), e.g. preview('interval', hours=2)"
    )


def schedule_spec(
    kind: str, options: dict[str, Any], trigger_args: dict[str, Any], default_tz: tzinfo, now: datetime | None = None
) -> dict[str, Any]:
    """The wire trigger spec (``timezone``, ``end_date`` and ``jitter``
    popped from *options*), built once with APScheduler so that a bad field
    fails here, and refused, naming its arguments, if it never fires."""
    tz = job_zone(options, default_tz)
    end_date = options.pop("end_date", None)
    if end_date is not None:
        if kind in ("now", "date"):
            raise InvalidJob(f"end_date: not an option of {kind} jobs")
        trigger_args["end_date"] = to_datetime(end_date, tz, "end_date")
    jitter = options.pop("jitter", None)
    options.pop("timezone", None)
    spec = trigger_spec(kind, tz, jitter=jitter, **trigger_args)
    trigger = build_trigger(spec, tz)  # a bad cron field or date fails here
    if kind not in ("now", "date") and next_fire_time(trigger, _now(now)) is None:
        raise InvalidJob(_never_fires(spec, tz, _now(now)))
    return spec


def no_other_arguments(kind: str, options: dict[str, Any]) -> None:
    for key in options:
        raise InvalidJob(f"{key}: not an argument of a {kind} schedule")


def _never_fires(spec: dict[str, Any], tz: tzinfo, now: datetime) -> str:
    """Why a schedule never fires, naming the arguments at fault."""
    if spec.get("end_date"):
        unbounded = build_trigger({k: v for k, v in spec.items() if k != "end_date"}, tz)
        first = next_fire_time(unbounded, now)
        if first is not None:
            return (
                f"end_date: {spec['end_date']} is before the schedule's first fire time "
                f"({first.isoformat()}): this schedule never fires"
            )
    named = [
        key
        for key in ("crontab", "year", "month", "day", "week", "day_of_week", "start_date")
        if spec.get(key) is not None
    ]
    shown = ", ".join(f"{key}={spec[key]!r}" for key in named)
    return f"{', '.join(named) or spec['type']}: this {spec['type']} schedule never fires ({shown})"


def _now(now: datetime | None) -> datetime:
    """*now*, or the current time (the testing scheduler passes its fake clock)."""
    return now if now is not None else datetime.now(timezone.utc)
