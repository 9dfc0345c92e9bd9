"""Hand-made pickles for the job-store tests: any global by (module, name),
calls of them, and the function-building payload of issue 16.

:func:`craft` writes what :class:`G` and :class:`Call` describe with the
pure-Python pickler, so a test can name globals that no real object has
(``("apscheduler.triggers.cron", "convert_to_datetime.__class__")``).
"""

from __future__ import annotations

import io
import pickle
import sys
from datetime import datetime, timezone
from typing import Any

from apscheduler.triggers.date import DateTrigger

#: A module the old unpickler admitted every name of.
TRIGGERS = "apscheduler.triggers.cron"


class G:
    """The global *module*.*name*, written as pickle writes a class."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> None:  # pickle wants a callable in a reduce
        raise AssertionError("never called here")


class Call:
    """``func(*args)`` when loaded."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args

    def __call__(self, *args: Any) -> None:  # a call's result may be called in turn
        raise AssertionError("never called here")


class _Crafter(pickle._Pickler):  # type: ignore[name-defined,misc]
    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_g(self, obj: G) -> None:
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)

    dispatch[G] = save_g


def craft(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Crafter(buf, protocol=4).dump(obj)
    return buf.getvalue()


def _code_args(code: Any) -> tuple[Any, ...]:
    """The positional arguments of ``types.CodeType`` that rebuild *code*."""
    names = [
        "co_argcount",
        "co_posonlyargcount",
        "co_kwonlyargcount",
        "co_nlocals",
        "co_stacksize",
        "co_flags",
        "co_code",
        "co_consts",
        "co_names",
        "co_varnames",
        "co_filename",
        "co_name",
    ]
    if sys.version_info >= (3, 11):
        names += ["co_qualname", "co_firstlineno", "co_linetable", "co_exceptiontable"]
    else:
        names += ["co_firstlineno", "co_linetable"]
    return (*(getattr(code, name) for name in names), (), ())


def function_payload(marker: str) -> Call:
    """Issue 16's escape: the ``function`` and ``code`` types reached through
    dotted names under ``apscheduler.triggers``, a function built from them
    and called: it creates the file *marker*."""
    code = compile(f"__import__('pathlib').Path({marker!r}).touch()", "<stored job>", "exec")
    code_type = G(TRIGGERS, "convert_to_datetime.__code__.__class__")
    function_type = G(TRIGGERS, "convert_to_datetime.__class__")
    return Call(Call(function_type, Call(code_type, *_code_args(code)), {}))


def job_state(job_id: str, func: str, args: tuple[Any, ...] = (), **extra: Any) -> dict[str, Any]:
    """An APScheduler job state as our job store writes it (a date job due now)."""
    now = datetime.now(timezone.utc)
    return {
        "version": 1,
        "id": job_id,
        "func": func,
        "trigger": DateTrigger(now, timezone.utc),
        "executor": "default",
        "args": args,
        "kwargs": {},
        "name": func,
        "misfire_grace_time": None,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": now,
        **extra,
    }
