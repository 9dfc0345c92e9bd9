"""The restricted unpickler of stored jobs: a row of a queue's job store loads
APScheduler's job state, and nothing else (no code runs as it loads)."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

from pyramid_scheduler.triggers.cron import WallClockCronTrigger
from pyramid_scheduler.triggers.delay import FixedDelayTrigger


def _loadable_globals() -> dict[tuple[str, str], Any]:
    """Every global a stored job's pickle may name, by (module, name) exactly
    as pickle writes it: the trigger classes (and their cron fields and
    expressions) and the date/time types. Nothing else: no function, no
    dotted name (pickle protocol 4 would follow ``a.b`` through attributes),
    no module-wide prefix."""
    from datetime import date, time
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
    from apscheduler.triggers.combining import AndTrigger, OrTrigger
    from apscheduler.triggers.cron import CronTrigger, expressions, fields
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    classes: list[type] = [
        datetime,
        date,
        time,
        timedelta,
        timezone,
        ZoneInfo,
        DateTrigger,
        IntervalTrigger,
        FixedDelayTrigger,
        CronTrigger,
        WallClockCronTrigger,
        CalendarIntervalTrigger,
        AndTrigger,
        OrTrigger,
        fields.BaseField,
        fields.WeekField,
        fields.DayOfMonthField,
        fields.DayOfWeekField,
        fields.MonthField,
        expressions.AllExpression,
        expressions.RangeExpression,
        expressions.MonthRangeExpression,
        expressions.WeekdayRangeExpression,
        expressions.WeekdayPositionExpression,
        expressions.LastDayOfMonthExpression,
    ]
    loadable: dict[tuple[str, str], Any] = {(cls.__module__, cls.__qualname__): cls for cls in classes}
    # Where releases before the package's subpackages pickled it from.
    loadable[("pyramid_scheduler.catchup", "WallClockCronTrigger")] = WallClockCronTrigger
    # ZoneInfo pickles as getattr(ZoneInfo, "_unpickle"), and only that getattr is served.
    loadable[("builtins", "getattr")] = _zoneinfo_getattr
    return loadable


def _zoneinfo_getattr(obj: Any, name: str) -> Any:
    from zoneinfo import ZoneInfo

    if obj is ZoneInfo and name == "_unpickle":
        return ZoneInfo._unpickle  # type: ignore[attr-defined]
    raise pickle.UnpicklingError(f"refusing getattr({obj!r:.80}, {name!r:.80}) in a stored job")


class JobUnpickler(pickle.Unpickler):
    """Loads APScheduler job state, and nothing else.

    A row of the job store written by someone else (an SQL injection in the
    application, a shared database role) must not run code when loaded: only
    the (module, name) pairs of :func:`_loadable_globals` are accepted, never
    a dotted or ``_``-prefixed name, and every other value is plain data. Job
    functions are stored as ``module:qualname`` strings, checked by
    :func:`pyramid_scheduler.wire.refs.check_ref` as the job loads.
    """

    _loadable: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if "." in name or name.startswith("_"):
            raise pickle.UnpicklingError(
                f"refusing to load {module!r:.80}, {name!r:.80} from a stored job (a dotted or private name)"
            )
        if JobUnpickler._loadable is None:
            JobUnpickler._loadable = _loadable_globals()
        try:
            return JobUnpickler._loadable[(module, name)]
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"refusing to load {module!r:.80}.{name!r:.80} from a stored job") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id in a stored job")
