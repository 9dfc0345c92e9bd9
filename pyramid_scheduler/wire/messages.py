"""Messages: a job request <-> its version 1 JSON, checked field by field.

The producer (:mod:`pyramid_scheduler.web.proxy`) builds a :class:`JobRequest`
from a function reference (:mod:`pyramid_scheduler.wire.refs`), arguments
checked by :func:`check_json`, a trigger spec
(:mod:`pyramid_scheduler.triggers.build`) and options
(:mod:`pyramid_scheduler.wire.options`), and sends :meth:`JobRequest.encode`
(signed by :mod:`pyramid_scheduler.wire.signing`). The daemon decodes the body
with :func:`decode`, which checks every field, so a malformed message is
refused at its door with a reason, and :func:`admit` imports the function of
an ``add`` request and matches its arguments. See ``docs/wire-format.rst``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler.exceptions import InvalidJob, InvalidMessage, SerializationError
from pyramid_scheduler.triggers.build import TRIGGER_TYPES
from pyramid_scheduler.wire.flows import flow_problem, steps_of
from pyramid_scheduler.wire.options import option_problem
from pyramid_scheduler.wire.refs import check_allowed, check_arguments, check_ref

VERSION = 1
OPS = ("add", "cancel", "message", "reschedule", "pause", "resume", "run_now")
#: Ops that manage a stored job (the job ``id`` on ``queue``).
MANAGEMENT_OPS = ("reschedule", "pause", "resume", "run_now")
MAX_DEPTH = 32
#: Longest value of each text field: the job store's column widths.
FIELD_LENGTHS = {"id": 200, "queue": 200, "mid": 64, "func": 500}


def new_id() -> str:
    return uuid.uuid4().hex


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


def admit(request: JobRequest, settings: Any) -> tuple[JobRequest, Callable[..., Any]]:
    """The daemon's door for an ``add`` request: its function renamed by
    ``scheduler.func_aliases``, checked against ``scheduler.allowed_modules``,
    imported and matched with the arguments, then checked by the function's
    own check under *settings* (the daemon's
    :class:`~pyramid_scheduler.settings.SchedulerSettings`; see
    :func:`~pyramid_scheduler.wire.refs.job_check`), and the functions of the
    steps its ``flow`` carries checked against the same list. Shared by the
    engine and :mod:`pyramid_scheduler.testing`.

    :returns: the request (with the function's new name) and the function.
    :raises InvalidJob: naming the function and what is wrong.
    """
    aliases = settings.func_aliases
    assert request.func is not None
    if request.func in aliases:
        request = replace(request, func=aliases[request.func])
    assert request.func is not None
    allowed = settings.allowed_modules
    func = check_ref(request.func, allowed)
    check_arguments(func, request.args, request.kwargs, request.func, settings)
    for step in steps_of(request.options.get("flow")):  # a chain's later steps, a group's then
        check_allowed(aliases.get(step["func"], step["func"]), allowed)
    return request, func


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
    problem = option_problem(options, trigger.get("type")) or flow_problem(options.get("flow"), trigger.get("type"))
    if problem:
        raise InvalidMessage(problem)
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
