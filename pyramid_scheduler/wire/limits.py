"""Flow limits on the wire: the checks of ``max_concurrency``, ``concurrency_key``,
``rate_limit`` and ``rate_key``, and the keys' templates.

Asked by :func:`pyramid_scheduler.wire.options.option_problem` (the producer
and the daemon's door refuse the same things, naming the option) and by the
producer (:meth:`~pyramid_scheduler.web.proxy.SchedulerProxy.add_async_job`),
which formats a key's template over the job's arguments
(:func:`resolve_keys`) before the message is built: on the wire a key is the
final string, at most :data:`MAX_KEY` characters. The daemon enforces the
limits in the job store (:mod:`pyramid_scheduler.daemon.limits`); see
:doc:`flow`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

#: The options of this module and their types (merged into ``OPTION_TYPES``).
LIMIT_TYPES: dict[str, tuple[type, ...]] = {
    "max_concurrency": (int,),
    "concurrency_key": (str,),
    "rate_limit": (str,),
    "rate_key": (str,),
}
#: The longest key (the slots and rates tables' column).
MAX_KEY = 200
#: The largest ``max_concurrency`` (one slot row per run at most this many).
MAX_CONCURRENCY = 10_000
#: The largest count of a rate (``N/s``).
MAX_RATE = 1_000_000
#: The job kinds that take limits (a held run is stored back as a one-off job).
LIMIT_TRIGGERS = ("now", "date")
#: Seconds of each unit of ``rate_limit``.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d{1,7})\s*/\s*([smh])\s*$")


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/m"`` -> (100, 60.0).

    :raises ValueError: not ``N/s``, ``N/m`` or ``N/h`` with N from 1 to :data:`MAX_RATE`.
    """
    match = _RATE.match(text)
    count = int(match.group(1)) if match else 0
    if not match or not 1 <= count <= MAX_RATE:
        raise ValueError(f"rate_limit: expected 'N/s', 'N/m' or 'N/h' with N from 1 to {MAX_RATE}, got {text!r:.80}")
    return count, UNITS[match.group(2)]


def limits_problem(options: Mapping[str, Any], kind: str | None) -> str | None:
    """What is wrong with the limit options of a job of *kind*, or None."""
    if not any(key in options for key in LIMIT_TYPES):
        return None
    if kind not in LIMIT_TRIGGERS:
        names = ", ".join(key for key in LIMIT_TYPES if key in options)
        return (
            f"{names}: only one-off jobs (add_async_job, add_date_job) take flow limits, not {kind} jobs "
            "(use max_instances for a recurring job)"
        )
    if options.get("durable") is False:
        return "durable: a durable=False job skips the job store, where the limits are kept; drop one of them"
    limit = options.get("max_concurrency")
    if limit is not None and not 1 <= limit <= MAX_CONCURRENCY:
        return f"max_concurrency: expected 1 to {MAX_CONCURRENCY}, got {limit!r}"
    if "concurrency_key" in options and limit is None:
        return "concurrency_key: needs max_concurrency=N (the number of runs with that key at once)"
    if "rate_key" in options and "rate_limit" not in options:
        return "rate_key: needs rate_limit='N/s', 'N/m' or 'N/h'"
    if "rate_limit" in options:
        try:
            parse_rate(options["rate_limit"])
        except ValueError as exc:
            return str(exc)
    for name in ("concurrency_key", "rate_key"):
        key = options.get(name)
        if key is not None and not 1 <= len(key) <= MAX_KEY:
            return f"{name}: expected 1 to {MAX_KEY} characters, got {len(key)}"
    return None


def resolve_keys(options: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    """Format the templates of ``concurrency_key`` and ``rate_key`` in
    *options* over *args* and *kwargs* (``"tenant:{0}"``, ``"tenant:{tenant}"``),
    in place. Only plain fields: no attribute, index or format spec.

    :raises ValueError: a field names no argument, or is not plain; the message names the option.
    """
    for name in ("concurrency_key", "rate_key"):
        template = options.get(name)
        if not isinstance(template, str) or "{" not in template and "}" not in template:
            continue
        try:
            fields = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"{name}: not a valid template ({exc}): {template!r:.80}") from exc
        out = []
        for literal, field, spec, conversion in fields:
            out.append(literal)
            if field is None:
                continue
            if spec or conversion or not re.fullmatch(r"\d{1,3}|[A-Za-z_][A-Za-z0-9_]{0,99}", field):
                raise ValueError(
                    f"{name}: only plain fields such as {{0}} or {{tenant}} are allowed, "
                    f"got {{{field}}} in {template!r:.80}"
                )
            try:
                value = args[int(field)] if field.isdigit() else kwargs[field]
            except (IndexError, KeyError):
                raise ValueError(f"{name}: {{{field}}} names no argument of the job ({template!r:.80})") from None
            out.append(str(value)[: MAX_KEY + 1])
        options[name] = "".join(out)
