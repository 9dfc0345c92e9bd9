"""Job options: the one check of what travels in a request's ``"options"``.

The producer (:meth:`~pyramid_scheduler.web.proxy.SchedulerProxy.add_async_job`
and the others) and the daemon's door (:func:`pyramid_scheduler.wire.messages.decode`)
both ask :func:`option_problem`, so what one refuses the other refuses, with
the same message naming the option: its type (:data:`OPTION_TYPES`), its
range, and how it goes with the job's trigger and its other options (retries
only for one-off jobs; ``durable=False`` only for run-now jobs, and not with
retries; ``catch_up`` only for recurring ones, and not with the APScheduler
options it sets itself; ``priority`` from 0 to 9; ``expires`` only for
one-off jobs, as the epoch second the producer made of it with
:func:`expires_at`). The producer raises
:class:`~pyramid_scheduler.exceptions.InvalidJob` with it in the caller, the
door :class:`~pyramid_scheduler.exceptions.InvalidMessage`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.wire.limits import LIMIT_TYPES, limits_problem

#: Per-job options that travel in ``"options"`` and their checks.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "misfire_grace_time": (int, type(None)),
    "coalesce": (bool,),
    "max_instances": (int,),
    "name": (str,),
    "retries": (int,),
    "retry_delay": (int, float),
    "retry_backoff": (int, float),
    "retry_max_delay": (int, float),
    "ttl": (int, float, type(None)),
    "catch_up": (str,),
    "durable": (bool,),
    **LIMIT_TYPES,
    "timeout": (int, float, type(None)),
    "priority": (int,),
    "expires": (int, float),
    # A step of a chain or group: checked by pyramid_scheduler.wire.flows.
    "flow": (dict,),
}
#: Options that APScheduler takes as integers of 1 or more (or None).
POSITIVE_OPTIONS = ("misfire_grace_time", "max_instances")
#: Numeric options beside those and the least value each takes.
OPTION_MINIMUMS: dict[str, float] = {
    "retries": 0,
    "retry_delay": 0,
    "retry_backoff": 1,
    "retry_max_delay": 0,
    "ttl": 0,
    "timeout": 1,
}
#: The longest wait before a retry, in seconds.
MAX_RETRY_DELAY = 366 * 86400.0
#: Trigger types whose jobs may ask for retries (one-off runs).
RETRY_TRIGGERS = ("now", "date")
#: Trigger types whose jobs may skip the record-first guarantee (``durable=False``).
NON_DURABLE_TRIGGERS = ("now",)
#: Options of ``add_*_job`` that shape the trigger rather than the job (they
#: travel in the trigger spec, not here).
TRIGGER_OPTIONS = ("end_date", "timezone", "jitter")
#: The catch-up policies of recurring jobs (``catch_up``, ``scheduler.catch_up``;
#: see :mod:`pyramid_scheduler.daemon.catchup`).
CATCH_UP_POLICIES = ("skip", "once", "all")


#: The priorities a job may have (higher first; see docs/flow.rst).
PRIORITIES = range(10)
#: Trigger types whose jobs may have an expiry (``expires``: one-off runs).
EXPIRING_TRIGGERS = ("now", "date")


def option_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """What is wrong with a job's *options*, or None.

    Each option is checked against :data:`OPTION_TYPES` and its range, then
    the retry and ``catch_up`` options against *kind* (the trigger type).

    :returns: a message naming the first option at fault.
    """
    for key, value in options.items():
        problem = _type_problem(key, value)
        if problem:
            return problem
    for key, least in OPTION_MINIMUMS.items():
        value = options.get(key)
        if value is None:
            continue
        if not math.isfinite(value) or value < least:
            return f"{key}: expected a number of {least:g} or more, got {value!r}"
        if key in ("retry_delay", "retry_max_delay") and value > MAX_RETRY_DELAY:
            return f"{key}: at most {MAX_RETRY_DELAY:g} seconds (a year), got {value!r}"
    if options.get("timeout") is not None and options.get("durable") is False:
        return "timeout: a durable=False job is not watched while it runs; drop timeout=, or durable=False"
    if options.get("retries") and kind not in RETRY_TRIGGERS:
        return (
            f"retries: only one-off jobs (add_async_job, add_date_job) are retried, not {kind} "
            "jobs, whose next run comes anyway"
        )
    return (
        durable_problem(options, kind)
        or catch_up_problem(options, kind)
        or flow_problem(options, kind)
        or limits_problem(options, kind)
    )


def flow_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """Check ``priority`` (0 to 9) and ``expires`` (on the wire: the epoch
    second by which the run must have started; one-off jobs only).

    :returns: an error message naming the option, or None.
    """
    priority = options.get("priority")
    if priority is not None and priority not in PRIORITIES:
        return f"priority: expected a whole number from 0 to 9 (higher runs first), got {priority!r}"
    expires = options.get("expires")
    if expires is None:
        return None
    if not math.isfinite(expires) or expires <= 0:
        return f"expires: expected a time (epoch seconds) after 1970, got {expires!r}"
    if kind not in EXPIRING_TRIGGERS:
        return (
            f"expires: only one-off jobs (add_async_job, add_date_job) expire, not {kind} jobs, "
            "whose next run comes anyway (use misfire_grace_time for a late run)"
        )
    return None


def durable_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """Check ``durable=False`` (run straight from the broker message, recorded
    after the run: see :mod:`pyramid_scheduler.daemon.fastlane`) against the
    job's kind and its retries.

    :returns: an error message naming the option, or None when they agree.
    """
    if options.get("durable") is not False:
        return None
    if kind not in NON_DURABLE_TRIGGERS:
        return (
            f"durable: only run-now jobs (add_async_job) may be durable=False, not {kind} jobs, "
            "which wait in the job store until they are due"
        )
    for key in ("priority", "expires"):
        if options.get(key) is not None:
            return f"{key}: not with durable=False (a job run straight from its message has no place to wait in)"
    if options.get("flow") is not None:
        return "flow: a step of a chain or group is stored (durable), so that its followers are made"
    if options.get("retries"):
        return (
            "retries: a durable=False job runs at most once and is not retried (nothing is stored "
            "to retry it from); drop retries=, or durable=False"
        )
    return None


def _type_problem(key: str, value: Any) -> str | None:
    kinds = OPTION_TYPES.get(key)
    if kinds is None:
        return (
            f"{key}: unknown option; add_*_job accepts id, immediate, tm, then, "
            f"{', '.join(name for name in OPTION_TYPES if name != 'flow')}, {', '.join(TRIGGER_OPTIONS)}"
        )
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("None" if kind is type(None) else kind.__name__ for kind in kinds)
        return f"{key}: expected {expected}, got {value!r:.80}"
    if key in POSITIVE_OPTIONS and value is not None and value < 1:  # type: ignore[operator]
        return f"{key}: expected 1 or more, got {value!r}"
    return None


def catch_up_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """Check ``catch_up`` against the job's kind and other options.

    :returns: an error message naming the option, or None when they agree.
    """
    policy = options.get("catch_up")
    if policy is None:
        return None
    if policy not in CATCH_UP_POLICIES:
        return f"catch_up: expected one of {', '.join(map(repr, CATCH_UP_POLICIES))}, got {policy!r}"
    if kind in ("now", "date"):
        return (
            f"catch_up: not an option of {kind} jobs (a late {kind} job runs if it is within "
            "misfire_grace_time, else it is reported missed)"
        )
    if policy != "skip":
        for key in ("misfire_grace_time", "coalesce"):
            if key in options:
                return (
                    f"{key}: has no effect with catch_up={policy!r} (late runs are run whatever "
                    "their lateness); use it with catch_up='skip'"
                )
    return None


def expires_at(value: Any, now: datetime) -> float:
    """The ``expires`` option of ``add_*_job`` as it travels: seconds from
    *now* (a number above zero, or a :class:`~datetime.timedelta`), or an
    aware :class:`~datetime.datetime`, made the epoch second by which the run
    must have started.

    :raises InvalidJob: naming the option.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidJob(
                f"expires: {value.isoformat()} is a naive datetime; pass an aware one "
                "(datetime.now(timezone.utc) + ...) or seconds from now"
            )
        at = value.timestamp()
        if at <= now.timestamp():
            raise InvalidJob(f"expires: {value.isoformat()} is already past; the job could never start")
        return at
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidJob(f"expires: expected seconds from now above zero or an aware datetime, got {value!r:.80}")
    return now.timestamp() + float(value)
