"""Previews: a schedule's next fire times, as the daemon will compute them.

``scheduler.preview(...)`` (a schedule given as ``add_*_job`` arguments,
read by :mod:`pyramid_scheduler.triggers.forms`) and
``scheduler.preview_job(job_id)`` (the trigger spec in a stored job's record)
list the times of the very APScheduler trigger the daemon builds
(:func:`pyramid_scheduler.triggers.build.build_trigger`), without jitter, in
the schedule's time zone, through daylight saving changes.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.triggers.build import build_trigger, to_zone

#: Most fire times a preview lists.
MAX_PREVIEW = 1000


def fire_times(trigger: BaseTrigger, after: datetime, n: int, tz: tzinfo) -> list[datetime]:
    """The next *n* fire times of *trigger* from *after*, in *tz*.

    Jitter is not applied (build the trigger without it).
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PREVIEW:
        raise InvalidJob(f"n: expected a number of fire times from 1 to {MAX_PREVIEW}, got {n!r}")
    times: list[datetime] = []
    previous: datetime | None = None
    now = after
    while len(times) < n:
        try:
            nxt = trigger.get_next_fire_time(previous, now)
        except (ValueError, OverflowError):  # past the year 9999
            break
        if nxt is None:
            break
        # Through UTC: APScheduler may return a wall time that does not exist
        # (02:30 on the night clocks go forward) with the offset before the change.
        times.append(nxt.astimezone(timezone.utc).astimezone(tz))
        previous, now = nxt, nxt.astimezone(timezone.utc)
    return times


def spec_fire_times(
    spec: dict[str, Any], n: int, default_tz: tzinfo, anchor: datetime | None = None, now: datetime | None = None
) -> list[datetime]:
    """:func:`fire_times` of a wire trigger spec, from now, in its zone."""
    tz = to_zone(spec["timezone"]) if spec.get("timezone") else default_tz
    trigger = build_trigger({k: v for k, v in spec.items() if k != "jitter"}, tz, anchor=anchor)
    return fire_times(trigger, now if now is not None else datetime.now(timezone.utc), n, tz)
