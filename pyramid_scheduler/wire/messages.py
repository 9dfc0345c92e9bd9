"""Messages: job requests <-> version 1 JSON, and the checks both ends share.

The producer (:mod:`pyramid_scheduler.web.proxy`) builds a :class:`JobRequest`
with :func:`callable_ref`, :func:`check_json` and :func:`trigger_spec`, and
sends :meth:`JobRequest.to_wire`. The consumer decodes the body with
:func:`decode`, which checks every field, so a malformed message is refused at
the daemon's door with a reason. :func:`build_trigger` turns a trigger spec
into an APScheduler trigger on both sides, so a bad cron field fails in the
web request, not later in the daemon. See ``docs/wire-format.rst``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import importlib
import inspect
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import check_callable_args

from pyramid_scheduler.daemon.catchup import WallClockCronTrigger
from pyramid_scheduler.daemon.catchup import check_options as check_catch_up
from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage, SerializationError

VERSION = 1
OPS = ("add", "cancel", "message", "reschedule", "pause", "resume", "run_now")
#: Ops that manage a stored job (the job ``id`` on ``queue``).
MANAGEMENT_OPS = ("reschedule", "pause", "resume", "run_now")
TRIGGER_TYPES = ("now", "date", "interval", "cron")
INTERVAL_FIELDS = ("weeks", "days", "hours", "minutes", "seconds")
CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
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
}
#: The longest wait before a retry, in seconds.
MAX_RETRY_DELAY = 366 * 86400.0
#: Trigger types whose jobs may ask for retries (one-off runs).
RETRY_TRIGGERS = ("now", "date")
MAX_DEPTH = 32
#: Longest value of each text field: the job store's column widths.
FIELD_LENGTHS = {"id": 200, "queue": 200, "mid": 64, "func": 500}
#: The Kombu message header that carries the message's signature
#: (:func:`sign_message`).
SIGNATURE_HEADER = "x-pyramid-scheduler-signature"
#: The signature scheme producers use: HMAC-SHA256 of the body and of the
#: message properties the daemon reads (:func:`signed_text`).
SIGNATURE_SCHEME = "v2"
#: Years within which a cron schedule must fire (from its start, or now), or
#: count as never firing (:func:`next_fire_time`): APScheduler searches up to
#: the year 9999 for a schedule that never fires, ~0.7 s of CPU; 100 years
#: cost ~10 ms.
CRON_SEARCH_YEARS = 100
#: The body-only signature of pre-release builds (refused with its own reason).
_V1_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def new_id() -> str:
    return uuid.uuid4().hex


# -- callables ------------------------------------------------------------------------


def callable_ref(func: Any, allowed: tuple[str, ...] = ()) -> str:
    """Return ``"module:qualname"`` for a module-level function, or refuse it.

    A string is taken as the reference itself and checked by :func:`check_ref`
    (its module against *allowed*, ``scheduler.allowed_modules``, before it is
    imported).

    :raises InvalidJob: for a lambda, a nested function, a bound method, a
        ``functools.partial``, a function defined in ``__main__``, a module
        outside *allowed* or anything that does not resolve back to the same
        object.
    """
    if isinstance(func, str):
        ref = func.strip()
        check_ref(ref, allowed)
        return ref
    if isinstance(func, functools.partial):
        raise InvalidJob(
            "func: a functools.partial cannot be referenced by name; pass the "
            "function and put the bound values in args/kwargs"
        )
    if not callable(func):
        raise InvalidJob(f"func: {func!r} is not callable")
    if inspect.ismethod(func) and not inspect.isclass(func.__self__):
        raise InvalidJob(
            f"func: {func.__qualname__} is a bound method; the daemon cannot "
            "rebuild its instance. Use a module-level function that takes the "
            "instance's data as arguments"
        )
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not qualname or not module:
        raise InvalidJob(f"func: {func!r} has no importable name")
    if "<lambda>" in qualname:
        raise InvalidJob("func: a lambda has no importable name; define a module-level function")
    if "<locals>" in qualname:
        raise InvalidJob(f"func: {qualname} is a nested function; the daemon can only import module-level functions")
    if module == "__main__":
        raise InvalidJob(
            f"func: {qualname} is defined in __main__, which the daemon cannot "
            "import; move it into a module of your package"
        )
    ref = f"{module}:{qualname}"
    check_allowed(ref, allowed)
    try:
        resolved = resolve_ref(ref)
    except InvalidJob as exc:
        raise InvalidJob(f"func: {ref} does not resolve back to the function ({exc})") from exc
    if resolved is not func and resolved != func:
        raise InvalidJob(
            f"func: {ref} resolves to {resolved!r}, not to the function given; "
            "is it decorated or rebound under another name?"
        )
    return ref


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return the callable it names.

    Only what the module itself defines is reachable: a module-level
    function (or class), or a method of a class defined in the module
    (``module:Class.method``). Every step of the qualname must be such a
    class, and the callable's own ``__module__`` and ``__qualname__`` must be
    the reference's, so ``myjobs:os.system`` (an attribute chain through a
    module that ``myjobs`` imports) and ``myjobs:run`` (where ``run =
    os.system``) are refused before anything is called.

    :raises InvalidJob: naming the reference and what is wrong.
    """
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise InvalidJob(f"func {ref!r}: expected 'package.module:function'")
    parts = qualname.split(".")
    if any(not part.isidentifier() or (part.startswith("__") and part.endswith("__")) for part in parts):
        raise InvalidJob(f"func {ref!r}: {qualname!r} is not a plain dotted name of a function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidJob(f"func {ref!r}: module {module_name!r} cannot be imported ({exc})") from exc
    for index, part in enumerate(parts):
        owner = ".".join(parts[:index])
        if index and not (isinstance(obj, type) and _defined_as(obj, module_name, owner)):
            raise InvalidJob(
                f"func {ref!r}: {owner} is not a class defined in {module_name}; a job "
                "function must be named where it is defined"
            )
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidJob(f"func {ref!r}: {module_name} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise InvalidJob(f"func {ref!r} is not callable")
    if not _defined_as(obj, module_name, qualname):
        raise InvalidJob(
            f"func {ref!r}: is {getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', None)}, "
            f"not defined in {module_name} under that name; a job function must be named where it is "
            "defined"
        )
    return obj  # type: ignore[no-any-return]


def _defined_as(obj: Any, module: str, qualname: str) -> bool:
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == qualname


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]")


def check_name(value: Any, what: str, longest: int = 200) -> str:
    """Refuse a job id or queue name that is not 1 to *longest* characters or
    holds a control character (a NUL or a newline forges log lines and
    breaks the job store's text columns).

    :raises InvalidJob: naming *what* (``id``, ``job_id``, ``queue``).
    """
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        raise InvalidJob(f"{what}: expected a string of 1 to {longest} characters, got {value!r:.80}")
    if _CONTROL.search(value):
        raise InvalidJob(
            f"{what}: {value!r:.80} holds a control character (NUL, newline, ...); use printable characters only"
        )
    return value


def check_allowed(ref: str, allowed: tuple[str, ...]) -> None:
    """Refuse *ref* unless its module is one of *allowed* or below one.

    Checked before importing anything, on both ends.
    """
    if not allowed:
        return
    module = ref.partition(":")[0]
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        raise InvalidJob(f"func {ref!r}: module {module!r} is not in scheduler.allowed_modules")


def check_ref(ref: Any, allowed: tuple[str, ...]) -> Callable[..., Any]:
    """The one rule for a job function's reference, wherever it comes from
    (``add_*_job``, a message at the door, a row of the job store): a
    ``module:qualname`` string whose module is allowed (checked before
    anything is imported) and which names what that module defines
    (:func:`resolve_ref`).

    :returns: the function.
    :raises InvalidJob: naming the reference and what is wrong.
    """
    if not isinstance(ref, str) or ":" not in ref:
        raise InvalidJob(f"func {ref!r:.80}: expected 'package.module:function'")
    check_allowed(ref, allowed)
    return resolve_ref(ref)


def takes_request(func: Callable[..., Any]) -> str | None:
    """How *func* takes the request the runner builds for it: ``"first"`` (its
    first parameter is ``request``), ``"keyword"`` (a later one is), or ``None``.

    Asked several times for every job; the answer is kept per function.
    """
    try:
        return _takes_request(func)
    except TypeError:  # an unhashable callable
        return _takes_request.__wrapped__(func)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4096)
def _takes_request(func: Callable[..., Any]) -> str | None:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    for index, param in enumerate(params):
        if param.name != "request":
            continue
        if index == 0 and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return "first"
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            return "keyword"
    return None


def with_request(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], request: Any, stored: bool = False
) -> tuple[list[Any], dict[str, Any]]:
    """*args* and *kwargs* with *request* where *func* takes one.

    The job store keeps a ``None`` there (APScheduler checks a job's
    arguments against its signature); with *stored*, that placeholder is
    replaced rather than a new argument added.
    """
    how = takes_request(func)
    if how == "first":
        return [request, *args[1:]] if stored else [request, *args], kwargs
    if how == "keyword":
        return args, {**kwargs, "request": request}
    return args, kwargs


def without_request(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """A stored job's arguments as sent: without the request placeholder."""
    how = takes_request(func)
    if how == "first":
        return args[1:], kwargs
    if how == "keyword":
        return args, {k: v for k, v in kwargs.items() if k != "request"}
    return args, kwargs


def admit(
    request: JobRequest, aliases: Mapping[str, str], allowed: tuple[str, ...]
) -> tuple[JobRequest, Callable[..., Any]]:
    """The daemon's door for an ``add`` request: its function renamed by
    ``scheduler.func_aliases``, checked against ``scheduler.allowed_modules``,
    imported and matched with the arguments (shared by the engine and
    :mod:`pyramid_scheduler.testing`).

    :returns: the request (with the function's new name) and the function.
    :raises InvalidJob: naming the function and what is wrong.
    """
    assert request.func is not None
    if request.func in aliases:
        request = replace(request, func=aliases[request.func])
    assert request.func is not None
    func = check_ref(request.func, allowed)
    check_arguments(func, request.args, request.kwargs, request.func)
    return request, func


def check_arguments(func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], ref: str) -> None:
    """Refuse arguments the function's signature cannot take (its ``request``
    parameter, if any, is the runner's to fill in)."""
    if "request" in kwargs and takes_request(func):
        raise InvalidJob(
            f"func {ref}: kwargs['request']: the runner passes the job a request of its own; do not send one"
        )
    args, kwargs = with_request(func, args, kwargs, None)
    try:
        try:
            _check_shape(func, len(args), tuple(kwargs))
        except TypeError:  # an unhashable callable
            check_callable_args(func, args, kwargs)
    except ValueError as exc:
        raise InvalidJob(f"func {ref}: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _check_shape(func: Callable[..., Any], nargs: int, names: tuple[str, ...]) -> None:
    """APScheduler's argument check, which depends only on how many positional
    arguments and which keyword names are given: kept per shape once passed."""
    check_callable_args(func, [None] * nargs, dict.fromkeys(names))


def option_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """What is wrong with the retry, ``ttl`` and ``catch_up`` options, or None.

    Types are checked against :data:`OPTION_TYPES` first; this checks that
    numbers are finite and at least their minimum, and that ``retries`` is
    only asked of one-off jobs (*kind*: the trigger type). Producer and
    daemon share it, so what the proxy accepts the daemon stores.
    """
    for key, least in OPTION_MINIMUMS.items():
        value = options.get(key)
        if value is None:
            continue
        if not math.isfinite(value) or value < least:
            return f"{key}: expected a number of {least:g} or more, got {value!r}"
        if key in ("retry_delay", "retry_max_delay") and value > MAX_RETRY_DELAY:
            return f"{key}: at most {MAX_RETRY_DELAY:g} seconds (a year), got {value!r}"
    if options.get("retries") and kind not in RETRY_TRIGGERS:
        return (
            f"retries: only one-off jobs (add_async_job, add_date_job) are retried, not {kind} "
            "jobs, whose next run comes anyway"
        )
    return check_catch_up(options, kind)


def signed_text(body: bytes, routing_key: str, content_type: str, content_encoding: str) -> bytes:
    """What a version 2 signature covers: a first line naming the scheme and
    holding, as a JSON array, the message properties the daemon reads (its
    content type and encoding, and the broker queue or exchange it was sent
    to), then the body. JSON escapes newlines, so the first line ends at the
    first newline whatever the properties hold."""
    return _signed_head(str(routing_key), str(content_type), str(content_encoding)) + body


@functools.lru_cache(maxsize=256)
def _signed_head(routing_key: str, content_type: str, content_encoding: str) -> bytes:
    head = json.dumps(
        [SIGNATURE_SCHEME, content_type, content_encoding, routing_key], ensure_ascii=True, separators=(",", ":")
    )
    return head.encode("ascii") + b"\n"


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with *secret*, copied for each message (keying
    one anew costs more than the hashing of a small message)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def sign_message(
    body: bytes,
    secret: bytes,
    routing_key: str,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
) -> str:
    """The value of :data:`SIGNATURE_HEADER` for a message: ``v2=`` and the
    HMAC-SHA256 (hex) of :func:`signed_text`."""
    mac = _keyed(secret).copy()
    mac.update(_signed_head(str(routing_key), str(content_type), str(content_encoding)))
    mac.update(body)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def verify(
    body: bytes,
    signature: Any,
    secret: bytes,
    routing_key: str,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
) -> None:
    """Check the *signature* header of a message; any value is taken (a
    number, a list, non-ASCII text): anything but a good signature is refused.

    :raises InvalidMessage: the signature is missing or wrong.
    """
    if not isinstance(signature, str) or not signature:
        raise InvalidMessage("message is not signed, and scheduler.secret is set")
    if not signature.startswith(SIGNATURE_SCHEME + "="):
        if _V1_SIGNATURE.fullmatch(signature):
            raise InvalidMessage(
                "bad message signature: a version 1 signature (of the body only, "
                "from a pre-release build), which this daemon refuses: upgrade the producer"
            )
        raise InvalidMessage("bad message signature (is scheduler.secret the same on both ends?)")
    expected = sign_message(body, secret, routing_key, content_type, content_encoding)
    # Compared as bytes: hmac.compare_digest refuses str holding non-ASCII.
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "surrogatepass")):
        raise InvalidMessage("bad message signature (is scheduler.secret the same on both ends?)")


def sent_too_long_ago(sent_at: str, max_age: float, now: datetime | None = None) -> str | None:
    """Why a message sent at *sent_at* (ISO 8601) is refused as a possible
    replay, or None: it is older than *max_age* seconds (0: no limit), or its
    time cannot be read."""
    try:
        when = datetime.fromisoformat(sent_at)
    except (TypeError, ValueError):
        return f"sent_at {sent_at[:40]!r} is not an ISO 8601 time (signed messages must carry one)"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if not max_age:
        return None
    age = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if age > max_age:
        return (
            f"sent {age:.0f}s ago ({sent_at}), more than scheduler.max_message_age "
            f"({max_age:g}s): refused as a possible replay"
        )
    return None


# -- JSON arguments -------------------------------------------------------------------


def check_json(value: Any, where: str, depth: int = 0) -> Any:
    """Return *value* as plain JSON data (tuples become lists), or refuse it.

    :raises SerializationError: naming the path of the first bad item, such as
        ``kwargs['when']``.
    """
    if depth > MAX_DEPTH:
        raise SerializationError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{where}: {value!r} is not allowed in JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [check_json(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{where}: key {key!r} is a {type(key).__name__}; JSON object keys must be str"
                )
            out[key] = check_json(item, f"{where}[{key!r}]", depth + 1)
        return out
    hint = ""
    if isinstance(value, datetime):
        hint = "; pass value.isoformat() or a timestamp"
    raise SerializationError(f"{where}: {type(value).__name__} {value!r:.80} is not JSON-encodable{hint}")


def nested_deeper(value: Any, limit: int) -> bool:
    """True if *value* holds lists or objects nested more than *limit*
    levels deep (without recursion: the body may be nested thousands deep)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in item if isinstance(child, (list, dict)))
    return False


# -- time and triggers ----------------------------------------------------------------


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
    was accepted), not from whenever the daemon reads the message.

    :raises InvalidJob: naming the field APScheduler refused.
    """
    kind = spec.get("type")
    tz = to_zone(spec["timezone"]) if spec.get("timezone") else default_tz
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
            return IntervalTrigger(**fields, start_date=start, end_date=end, timezone=tz, jitter=spec.get("jitter"))
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
    **fields: Any,
) -> dict[str, Any]:
    """The wire form of a trigger; every time is an aware ISO 8601 string."""
    spec: dict[str, Any] = {"type": kind}
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


# -- the message ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """One wire message: ``op`` is one of :data:`OPS`."""

    op: str
    id: str
    queue: str
    func: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    mid: str = field(default_factory=new_id)
    sent_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def accepted_at(self) -> datetime:
        """When the producer accepted the job (``sent_at``); now if unreadable."""
        try:
            when = datetime.fromisoformat(self.sent_at)
        except (TypeError, ValueError):
            return datetime.now(timezone.utc)
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": VERSION,
            "op": self.op,
            "mid": self.mid,
            "id": self.id,
            "queue": self.queue,
            "sent_at": self.sent_at,
        }
        if self.op == "add":
            body.update(func=self.func, args=self.args, kwargs=self.kwargs, trigger=self.trigger, options=self.options)
        elif self.op == "message":
            body["text"] = self.text
        elif self.op == "reschedule":
            body["trigger"] = self.trigger
        return body

    def encode(self) -> bytes:
        return json.dumps(self.to_wire(), separators=(",", ":"), allow_nan=False).encode()


def _field(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], required: bool = True) -> Any:
    if name not in body:
        if required:
            raise InvalidMessage(f"field {name!r} is missing")
        return None
    value = body[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InvalidMessage(f"field {name!r} has type {type(value).__name__}")
    return value


def decode(body: Any) -> JobRequest:
    """Check a decoded message body and return its :class:`JobRequest`.

    Accepts the parsed JSON object, or ``bytes``/``str`` holding it.

    :raises InvalidMessage: naming the first problem found.
    """
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessage(f"body is not UTF-8 ({exc})") from exc
    if isinstance(body, str):
        # A body nested deeper than the producer allows has more brackets
        # than that: only such bodies are walked (a counted scan, in C).
        brackets = body.count("[") + body.count("{")
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise InvalidMessage(f"body is not JSON ({exc})") from exc
        if brackets > MAX_DEPTH and nested_deeper(body, MAX_DEPTH + 1):
            raise InvalidMessage(f"body is nested deeper than {MAX_DEPTH} levels below its fields")
    if not isinstance(body, dict):
        raise InvalidMessage(f"body is a {type(body).__name__}, expected a JSON object")
    version = body.get("v")
    if version != VERSION or isinstance(version, bool):
        raise InvalidMessage(f"unknown wire format version {version!r} (this daemon reads v{VERSION})")
    op = _field(body, "op", (str,))
    if op not in OPS:
        raise InvalidMessage(f"unknown op {op!r}")
    common = {
        "op": op,
        "id": _field(body, "id", (str,)),
        "queue": _field(body, "queue", (str,)),
        "mid": _field(body, "mid", (str,)),
        "sent_at": _field(body, "sent_at", (str,), required=False) or "",
    }
    for name, longest in FIELD_LENGTHS.items():
        if name in common and not 1 <= len(common[name]) <= longest:
            raise InvalidMessage(f"field {name!r} must be 1 to {longest} characters")
    for name in ("id", "queue"):
        try:
            check_name(common[name], f"field {name!r}")
        except InvalidJob as exc:
            raise InvalidMessage(str(exc)) from None
    if op == "cancel":
        return JobRequest(**common)
    if op == "message":
        return JobRequest(text=_field(body, "text", (str,)), **common)
    if op in MANAGEMENT_OPS:
        return _decode_management(body, common)
    func = _field(body, "func", (str,))
    if len(func) > FIELD_LENGTHS["func"]:
        raise InvalidMessage(f"field 'func' must be at most {FIELD_LENGTHS['func']} characters")
    if ":" not in func:
        raise InvalidMessage(f"field 'func' {func!r} is not 'module:qualname'")
    args = _field(body, "args", (list,))
    kwargs = _field(body, "kwargs", (dict,))
    trigger = _trigger_field(body)
    options = _field(body, "options", (dict,), required=False) or {}
    for key, value in options.items():
        kinds = OPTION_TYPES.get(key)
        if kinds is None:
            raise InvalidMessage(f"unknown option {key!r}")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise InvalidMessage(f"option {key!r} has type {type(value).__name__}")
        if key in POSITIVE_OPTIONS and value is not None and value < 1:  # type: ignore[operator]
            raise InvalidMessage(f"option {key!r} must be 1 or more, got {value!r}")
    problem = option_problem(options, trigger.get("type"))
    if problem:
        raise InvalidMessage(f"option {problem}")
    return JobRequest(func=func, args=args, kwargs=kwargs, trigger=trigger, options=options, **common)


def _trigger_field(body: Mapping[str, Any]) -> dict[str, Any]:
    trigger: dict[str, Any] = _field(body, "trigger", (dict,))
    if trigger.get("type") not in TRIGGER_TYPES:
        raise InvalidMessage(f"unknown trigger type {trigger.get('type')!r}")
    return trigger


def _decode_management(body: Mapping[str, Any], common: dict[str, Any]) -> JobRequest:
    """``reschedule`` (with a ``trigger``), ``pause``, ``resume``, ``run_now``."""
    if common["op"] == "reschedule":
        return JobRequest(trigger=_trigger_field(body), **common)
    return JobRequest(**common)
