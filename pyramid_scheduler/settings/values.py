"""How a setting is described, and how its text is read and checked.

Each kind turns the text of one ``scheduler.*`` setting into the value
:class:`~pyramid_scheduler.settings.model.SchedulerSettings` holds, or raises
:class:`pyramid.exceptions.ConfigurationError` naming the key, the value and
what was expected; :meth:`Kind.describe` says the same for the settings
reference (docs/settings.rst), so the check and its documentation are one
piece of code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pyramid.exceptions import ConfigurationError
from pyramid.path import DottedNameResolver
from pyramid.settings import asbool, aslist

PREFIX = "scheduler."

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {None: 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BOOLEANS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"}
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FUNC_REF = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:"
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)


def bad(key: str, value: Any, expected: str) -> ConfigurationError:
    """The error for *value* of ``scheduler.<key>``, saying what was expected."""
    return ConfigurationError(f"Invalid setting {PREFIX}{key} = {value!r}: expected {expected}.")


class Kind(Protocol):
    """A kind of value: reads a setting's text, and says what it takes."""

    def parse(self, key: str, value: Any) -> Any:
        """The value for ``scheduler.<key>``; raises ConfigurationError."""
        ...

    def describe(self) -> str:
        """What the value may be, in the settings reference (reStructuredText)."""
        ...


@runtime_checkable
class FamilyKind(Kind, Protocol):
    """The kind of a family of free names (``NAME.*``)."""

    def name(self, key: str) -> str:
        """The name the option is kept under."""
        ...


@dataclass(frozen=True)
class Flag:
    """``true``/``false`` and the other words of :data:`_BOOLEANS`."""

    def parse(self, key: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in _BOOLEANS:
            raise bad(key, value, "true or false")
        return asbool(text)

    def describe(self) -> str:
        return "Boolean"


def parse_duration(key: str, value: Any) -> float:
    """Seconds from ``90``, ``"90"``, ``"1.5s"``, ``"30m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise bad(key, value, "a duration such as 30, 30s, 15m, 24h or 7d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise bad(key, value, "a duration of zero or more")
    return seconds


@dataclass(frozen=True)
class Duration:
    """Seconds (see "Duration" under Value formats), at least *minimum*, or
    above zero with ``above_zero``."""

    minimum: float = 0.0
    above_zero: bool = False

    def parse(self, key: str, value: Any) -> float:
        seconds = parse_duration(key, value)
        if self.above_zero and seconds <= 0:
            raise bad(key, value, "a duration above zero")
        if seconds < self.minimum:
            raise bad(key, value, f"a duration of at least {self.minimum:g}s")
        return seconds

    def describe(self) -> str:
        if self.above_zero:
            return "Duration above zero"
        if self.minimum:
            return f"Duration of at least {self.minimum:g} s"
        return "Duration"


@dataclass(frozen=True)
class WholeSeconds:
    """A duration that is a whole number of seconds, at least 1 (what
    APScheduler takes as a misfire grace time)."""

    def parse(self, key: str, value: Any) -> int:
        seconds = parse_duration(key, value)
        if seconds < 1 or not float(seconds).is_integer():
            raise bad(key, value, "a whole number of seconds, at least 1")
        return int(seconds)

    def describe(self) -> str:
        return "Duration, a whole number of seconds, at least 1"


@dataclass(frozen=True)
class Whole:
    """A whole number, at least *minimum*."""

    minimum: int = 0
    unit: str = ""

    def parse(self, key: str, value: Any) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise bad(key, value, "a whole number") from None
        if number < self.minimum:
            raise bad(key, value, f"a whole number of at least {self.minimum}")
        return number

    def describe(self) -> str:
        unit = f" of {self.unit}" if self.unit else ""
        return f"Whole number{unit}, at least {self.minimum}"


@dataclass(frozen=True)
class Text:
    """Any text, stripped of surrounding blanks unless ``strip=False``;
    with *pattern*, text it matches in full (*expected* says what it is)."""

    pattern: str = ""
    expected: str = ""
    strip: bool = True

    def parse(self, key: str, value: Any) -> str:
        text = str(value).strip() if self.strip else str(value)
        if self.pattern and not re.match(self.pattern, text):
            raise bad(key, text, self.expected)
        return text

    def describe(self) -> str:
        return self.expected[:1].upper() + self.expected[1:] if self.expected else "Text"


@dataclass(frozen=True)
class Choice:
    """One of *words* (any case). *aliases* map other accepted words onto
    one of them; *expected* explains the choice in the error message."""

    words: tuple[str, ...]
    expected: str
    aliases: tuple[tuple[str, str], ...] = ()
    #: The error shows the value stripped rather than as written.
    show_stripped: bool = False
    fold_case: bool = True

    def parse(self, key: str, value: Any) -> str:
        stripped = str(value).strip()
        word = stripped.lower() if self.fold_case else stripped
        word = dict(self.aliases).get(word, word)
        if word not in self.words:
            raise bad(key, stripped if self.show_stripped else value, self.expected)
        return word

    def describe(self) -> str:
        accepted = ", ".join(f"``{word}``" for word in self.words)
        text = f"One of {accepted}" if len(self.words) > 1 else f"Only {accepted}"
        if self.aliases:
            text += " (or " + ", ".join(f"``{alias}``" for alias, _ in self.aliases) + ")"
        return text


@dataclass(frozen=True)
class Names:
    """A list of names (separated by blanks or new lines), each matching
    *pattern* (*expected* says what the list must be)."""

    pattern: str
    expected: str
    what: str = "names"

    def parse(self, key: str, value: Any) -> tuple[str, ...]:
        names = tuple(aslist(str(value)))
        for name in names:
            if not re.match(self.pattern, name):
                raise bad(key, value, self.expected)
        return names

    def describe(self) -> str:
        return f"List of {self.what}"


@dataclass(frozen=True)
class Queues(Names):
    """Queue names, without repeats."""

    pattern: str = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$"
    expected: str = "space-separated queue names made of letters, digits, '_', '.' and '-'"
    what: str = "queue names"

    def parse(self, key: str, value: Any) -> tuple[str, ...]:
        queues = super().parse(key, value)
        if len(set(queues)) != len(queues):
            raise bad(key, value, "queue names without repeats")
        return queues


@dataclass(frozen=True)
class Modules(Names):
    """Module names (``scheduler.allowed_modules``)."""

    pattern: str = _MODULE.pattern
    expected: str = "space-separated module names"
    what: str = "module names"


@dataclass(frozen=True)
class DottedName:
    """The dotted name of a callable (or the callable itself)."""

    def parse(self, key: str, value: Any) -> Callable[..., Any]:
        if callable(value):
            return value
        try:
            obj = DottedNameResolver().resolve(str(value).strip())
        except (ImportError, ValueError, AttributeError) as exc:
            raise bad(key, value, f"an importable dotted name ({exc})") from exc
        if not callable(obj):
            raise bad(key, value, "the dotted name of a callable")
        return obj  # type: ignore[no-any-return]

    def describe(self) -> str:
        return "Dotted name of a callable"


@dataclass(frozen=True)
class DottedNames:
    """A list of dotted names of callables."""

    def parse(self, key: str, value: Any) -> tuple[Callable[..., Any], ...]:
        return tuple(DottedName().parse(key, name) for name in aslist(str(value)))

    def describe(self) -> str:
        return "List of dotted names of callables"


@dataclass(frozen=True)
class Zone:
    """An IANA time zone name."""

    def parse(self, key: str, value: Any) -> ZoneInfo:
        try:
            return ZoneInfo(str(value).strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise bad(key, value, "an IANA zone name such as UTC or Europe/Paris") from None

    def describe(self) -> str:
        return "An IANA zone name"


@dataclass(frozen=True)
class Secret:
    """A key of at least 16 characters, kept as bytes; never shown in errors."""

    minimum: int = 16

    def parse(self, key: str, value: Any) -> bytes:
        secret = str(value).strip()
        if len(secret) < self.minimum:
            raise ConfigurationError(
                f"Invalid setting {PREFIX}{key}: expected at least {self.minimum} characters "
                "(for example the output of: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return secret.encode("utf-8")

    def describe(self) -> str:
        return f"At least {self.minimum} characters"


@dataclass(frozen=True)
class Aliases:
    """``old.module:func = new.module:func``, one per line."""

    def parse(self, key: str, value: Any) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for line in filter(None, (line.strip() for line in str(value).splitlines())):
            old, eq, new = (part.strip() for part in line.partition("="))
            if not (eq and _FUNC_REF.match(old) and _FUNC_REF.match(new)):
                raise bad(key, line, "lines of 'old.module:function = new.module:function'")
            if old in aliases or old == new:
                raise bad(key, line, "each old name once, mapped to another name")
            aliases[old] = new
        for old, new in aliases.items():
            if new in aliases:
                raise bad(key, f"{old} = {new}", f"the final name: {new} is itself renamed to {aliases[new]}")
        return aliases

    def describe(self) -> str:
        return "Lines of ``old.module:function = new.module:function``"


#: APScheduler options pyramid_scheduler sets itself, and what to use instead.
APS_OWNED = {
    "jobstores": f"{PREFIX}jobstore.url",
    "executors": f"{PREFIX}executor.max_workers",
    "job_defaults": f"{PREFIX}misfire_grace_time, {PREFIX}coalesce or the add_*_job options",
    "timezone": f"{PREFIX}timezone",
}


@dataclass(frozen=True)
class Setting:
    """One ``scheduler.*`` setting."""

    #: The key after ``scheduler.``; ``NAME.*`` for a family of free names.
    key: str
    #: How its text is read and checked.
    kind: Kind
    #: What it means (reStructuredText, for docs/settings.rst).
    doc: str
    #: The :class:`SchedulerSettings` field it sets; by default the key with
    #: ``_`` for ``.``; empty when another setting's reading uses it.
    field: str | None = None
    #: The default as written in an INI file (a test checks that it parses to
    #: the field's default), or ``None`` when words describe it.
    default: str | None = None
    #: Words for the default, after the value if there is one.
    default_doc: str = ""
    #: A blank value means the default (else it is read like any other).
    blank_is_default: bool = False

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_") if self.field is None else self.field

    @property
    def family(self) -> str | None:
        """``NAME.`` for a family of free names (``NAME.*``), else None."""
        return self.key[:-1] if self.key.endswith(".*") else None

    def shown_default(self) -> str:
        words = [f"``{self.default}``"] if self.default is not None else []
        return " ".join([*words, self.default_doc] if self.default_doc else words)


@dataclass(frozen=True)
class TransportOptions:
    """``broker.transport_options.NAME``: Kombu transport options, any name."""

    def parse(self, key: str, value: Any) -> Any:
        return coerce_option(value)

    def name(self, key: str) -> str:
        """The option's name: the key after ``broker.transport_options.``."""
        return key[len("broker.transport_options.") :]

    def describe(self) -> str:
        return "Any name; booleans and numbers are converted"


@dataclass(frozen=True)
class APSchedulerOptions:
    """``apscheduler.NAME``: APScheduler's options, but not those pyramid_scheduler sets."""

    def parse(self, key: str, value: Any) -> Any:
        name = key[len("apscheduler.") :]
        for taken, instead in APS_OWNED.items():
            if name == taken or name.startswith(taken + "."):
                raise bad(key, value, f"nothing: pyramid_scheduler sets APScheduler's {taken}; use {instead}")
        return value

    def name(self, key: str) -> str:
        """The option's name: the whole key, as APScheduler's ``configure(prefix=...)`` takes it."""
        return key

    def describe(self) -> str:
        return "Any name but " + ", ".join(f"``{name}``" for name in APS_OWNED)


def coerce_option(value: Any) -> Any:
    """A free-form option's value: a boolean, a number, else the text."""
    text = str(value).strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
