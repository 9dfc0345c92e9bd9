"""Log lines: what a sender controls cannot forge a line.

Job ids, queue names, ``--message`` text, function references and refusal
reasons come from producers, brokers and job-store rows. Every module logs
through :func:`get_logger`, whose logger carries one :class:`EscapeFields`
filter: each argument of a record that holds a control character (a newline,
a carriage return, an escape sequence, a NUL) is logged repr-escaped
(``a\\nb``), so a job id such as ``"x\\n2026-01-01 ERROR forged"`` stays on
its line. The format strings are ours and are left alone; the cost is paid
only for records that are emitted.

:func:`label_process` gives every record of a ``pscheduler`` process a
``process_index`` attribute (``2/4`` in the second of four supervised
daemons, ``1/1`` in a lone one, ``supervisor`` in the supervisor), for log
formats: ``%(process_index)s``. :class:`ProcessFormatter` writes ``-`` for
it in the records of other programs that share the INI file (``pserve``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

#: Argument types whose text holds no control character.
_PLAIN = (int, float, datetime, date, timedelta, type(None))
#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
CONTROL = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]")


def escape(text: str) -> str:
    """*text* with every control character written as Python writes it in a
    repr (``\\n``, ``\\x1b``, ``\\u2028``); other characters unchanged."""
    return CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def _escaped(value: Any) -> Any:
    if isinstance(value, _PLAIN):  # numbers keep their %d/%.2f
        return value
    text = value if isinstance(value, str) else _str(value)
    if text is None or not CONTROL.search(text):
        return value
    return escape(text)


def _str(value: Any) -> str | None:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - the record's own formatting reports it
        return None


#: A ``%`` conversion of a format string: its conversion type is group 1.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([a-zA-Z%])")


@functools.lru_cache(maxsize=2048)
def _kinds(msg: str, count: int) -> str:
    """The conversion types of *msg*'s *count* arguments (all ``s`` when
    they do not add up); kept per format string, which is ours."""
    kinds = "".join(kind for kind in _CONVERSION.findall(msg) if kind != "%")
    return kinds if len(kinds) == count else "s" * count


class EscapeFields(logging.Filter):
    """Escape the control characters of a record's arguments (see the module);
    an argument formatted with ``%r`` is left to its repr, which escapes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            kinds = _kinds(record.msg, len(args)) if isinstance(record.msg, str) else "s" * len(args)
            record.args = tuple(arg if kind in "ra" else _escaped(arg) for arg, kind in zip(args, kinds, strict=True))
        elif isinstance(args, Mapping):
            record.args = {key: _escaped(arg) for key, arg in args.items()}
        return True


_FILTER = EscapeFields()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`EscapeFields` on it (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class ProcessLabel:
    """A log record factory: the one before, plus ``record.process_index``."""

    def __init__(self, label: str, base: Callable[..., logging.LogRecord]) -> None:
        self.label = label
        self.base = base

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.base(*args, **kwargs)
        record.process_index = self.label
        return record


def label_process(label: str) -> None:
    """Give every log record made from now on in this process the attribute
    ``process_index = label`` (replacing an earlier label)."""
    factory = logging.getLogRecordFactory()
    base = factory.base if isinstance(factory, ProcessLabel) else factory
    logging.setLogRecordFactory(ProcessLabel(label, base))


class ProcessFormatter(logging.Formatter):
    """A formatter whose ``%(process_index)s`` is ``-`` in records that have
    none, for an INI file shared with ``pserve``: ``class =
    pyramid_scheduler.logs.ProcessFormatter`` in its ``[formatter_NAME]``."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Any = "%",
        validate: bool = True,
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate, defaults={"process_index": "-", **(defaults or {})})
