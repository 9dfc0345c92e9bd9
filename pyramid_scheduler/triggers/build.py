"""Trigger building: a wire trigger spec <-> the APScheduler trigger it describes.

Both ends build every trigger here. The producer turns the schedule arguments
of ``add_*_job`` (read by :mod:`pyramid_scheduler.triggers.forms`) into a
spec with :func:`trigger_spec` -- plain JSON, every time an aware ISO 8601
string -- and builds it once with :func:`build_trigger`, so a bad cron field
or date fails in the web request; the daemon builds the same trigger from the
spec it receives (:mod:`pyramid_scheduler.wire.messages`). A cron spec
becomes the DST-safe :class:`~pyramid_scheduler.triggers.cron.WallClockCronTrigger`.
:func:`next_fire_time` bounds APScheduler's search for a first fire time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.triggers.cron import WallClockCronTrigger
from pyramid_scheduler.triggers.delay import FixedDelayTrigger

TRIGGER_TYPES = ("now", "date", "interval", "cron")
INTERVAL_FIELDS = ("weeks", "days", "hours", "minutes", "seconds")
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
#: Years within which a cron schedule must fire (from its start, or now), or
#: count as never firing (:func:`next_fire_time`): APScheduler searches up to
#: the year 9999 for a schedule that never fires, ~0.7 s of CPU; 100 years
#: cost ~10 ms.
CRON_SEARCH_YEARS = 100


def to_datetime(value: Any, tz: tzinfo, where: str) -> datetime:
    """An aware datetime from an epoch number, an ISO string or a datetime.

    A naive datetime is read in *tz* (``scheduler.timezone``), never the
    host's zone.
    """
    if isinstance(value, bool):
        raise InvalidJob(f"{where}: expected a datetime, an ISO 8601 string or an epoch number")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidJob(f"{where}: {value!r} is not a time")
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidJob(f"{where}: {value!r} is out of range ({exc})") from exc
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidJob(f"{where}: {value!r} is not an ISO 8601 date-time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=tz)
        return value
    raise InvalidJob(
        f"{where}: {type(value).__name__} {value!r:.60} is not a datetime, ISO 8601 string or epoch number"
    )


def to_zone(value: Any, where: str = "timezone") -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidJob(f"{where}: {value!r} is not an IANA time zone name") from None


def zone_name(tz: tzinfo) -> str:
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    if key:
        return str(key)
    if tz is timezone.utc or tz.utcoffset(None) == timedelta(0):
        return "UTC"
    raise InvalidJob(f"timezone: {tz!r} has no IANA name; pass a zoneinfo.ZoneInfo")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def build_trigger(spec: Mapping[str, Any], default_tz: tzinfo, anchor: datetime | None = None) -> BaseTrigger:
    """Build the APScheduler trigger described by a wire trigger spec.

    An interval without ``start_date`` counts from *anchor* (the time the job
    was accepted), not from whenever the daemon reads the message; one with
    ``"fixed_delay": true`` is a :class:`~pyramid_scheduler.triggers.delay.FixedDelayTrigger`.
    A date spec may carry the ``delay`` (seconds) it was made with, which
    ``reschedule_job(id)`` applies again.

    :raises InvalidJob: naming the field APScheduler refused.
    """
    kind = spec.get("type")
    tz = to_zone(spec["timezone"]) if spec.get("timezone") else default_tz
    fixed_delay = spec.get("fixed_delay", False)
    if fixed_delay is not False and (fixed_delay is not True or kind != "interval"):
        raise InvalidJob(f"fixed_delay: true or false, and only for an interval trigger; got {fixed_delay!r} ({kind})")
    delay = spec.get("delay")
    if delay is not None and (
        kind != "date" or isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf
    ):
        raise InvalidJob(f"delay: seconds of zero or more, and only for a date trigger; got {delay!r} ({kind})")
    try:
        if kind in ("now", "date"):
            return DateTrigger(to_datetime(spec["run_date"], tz, "date"), timezone=tz)
        start = to_datetime(spec["start_date"], tz, "start_date") if spec.get("start_date") is not None else None
        end = to_datetime(spec["end_date"], tz, "end_date") if spec.get("end_date") is not None else None
        if start is not None and end is not None and end < start:
            raise InvalidJob("end_date: earlier than start_date")
        if kind == "interval":
            fields = {k: spec.get(k, 0) for k in INTERVAL_FIELDS}
            for key, value in fields.items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or value < 0
                    or not math.isfinite(value)
                ):
                    raise InvalidJob(f"{key}: expected a number of zero or more, got {value!r}")
            if timedelta(**fields) <= timedelta(0):
                raise InvalidJob("interval: weeks, days, hours, minutes or seconds must add up to more than zero")
            if start is None and anchor is not None:
                # In UTC: an anchor in a zone would move by wall clock.
                start = anchor.astimezone(timezone.utc) + timedelta(**fields)
            cls = FixedDelayTrigger if fixed_delay else IntervalTrigger
            return cls(**fields, start_date=start, end_date=end, timezone=tz, jitter=spec.get("jitter"))
        if kind == "cron":
            if spec.get("crontab"):
                trigger = WallClockCronTrigger.from_crontab(str(spec["crontab"]), timezone=tz)
                trigger.start_date = start
                trigger.end_date = end
                trigger.jitter = spec.get("jitter")
            else:
                fields = {k: spec[k] for k in CRON_FIELDS if spec.get(k) is not None}
                trigger = WallClockCronTrigger(
                    **fields, start_date=start, end_date=end, timezone=tz, jitter=spec.get("jitter")
                )
            return trigger
    except InvalidJob:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise InvalidJob(f"{kind} trigger: {exc}") from exc
    raise InvalidJob(f"trigger type {kind!r} is not one of {', '.join(TRIGGER_TYPES)}")


def next_fire_time(trigger: BaseTrigger, after: datetime) -> datetime | None:
    """The trigger's first fire time at or after *after* (None: never).

    A cron schedule is searched :data:`CRON_SEARCH_YEARS` ahead of *after*
    (or of its start) at most: one that does not fire by then counts as
    never firing. APScheduler alone searches to the year 9999, up to a
    second of CPU for an impossible date (the 31st of February), in the web
    request and again in the daemon.

    :raises InvalidJob: the schedule runs past the year 9999.
    """
    if isinstance(trigger, CronTrigger):
        begin = after if trigger.start_date is None else max(after, trigger.start_date)
        try:
            horizon = begin + timedelta(days=366 * CRON_SEARCH_YEARS)
        except OverflowError:
            horizon = None  # the year 9999 comes first
        if horizon is not None and (trigger.end_date is None or trigger.end_date > horizon):
            trigger = copy.copy(trigger)
            trigger.end_date = horizon
    try:
        return trigger.get_next_fire_time(None, after)
    except (ValueError, OverflowError) as exc:
        raise InvalidJob(f"{type(trigger).__name__}: its first run is out of range ({exc})") from exc


def trigger_spec(
    kind: str,
    tz: tzinfo,
    *,
    run_date: datetime | None = None,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    timezone_: tzinfo | None = None,
    jitter: Any = None,
    fixed_delay: bool = False,
    delay: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The wire form of a trigger; every time is an aware ISO 8601 string.
    ``fixed_delay`` (an interval's) and ``delay`` (a date's, in seconds)
    appear only when given."""
    spec: dict[str, Any] = {"type": kind}
    if fixed_delay:
        spec["fixed_delay"] = True
    if delay is not None:
        spec["delay"] = delay
    zone = timezone_ or tz
    spec["timezone"] = zone_name(zone)
    if run_date is not None:
        spec["run_date"] = _iso(run_date)
    if start_date is not None:
        spec["start_date"] = _iso(start_date)
    if end_date is not None:
        spec["end_date"] = _iso(end_date)
    if jitter is not None:
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or jitter < 0:
            raise InvalidJob(f"jitter: expected seconds of zero or more, got {jitter!r}")
        spec["jitter"] = jitter
    for key, value in fields.items():
        if value is None:
            continue
        if key in CRON_FIELDS and not isinstance(value, (int, str)) or isinstance(value, bool):
            raise InvalidJob(f"{key}: expected an int or a cron expression string, got {value!r}")
        spec[key] = value
    return spec
