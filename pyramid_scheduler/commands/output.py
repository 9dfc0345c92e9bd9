"""Output: how the ``pscheduler`` commands print what they read.

The last step of a command (:mod:`pyramid_scheduler.commands`): tables cut
to the terminal's width (80 columns when the output is not a terminal),
colour only on a terminal (and never with ``NO_COLOR`` set), times relative
to now in tables and absolute in details, and ``--json`` instead of all of
it: an array for a list, an object for one item, with the field names of
:meth:`~pyramid_scheduler.web.records.JobRecords.get_job` and
:meth:`~pyramid_scheduler.web.records.JobRecords.get_runs`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

#: Columns of a table when the output is not a terminal.
WIDTH = 80
#: Columns between two columns of a table.
GAP = " "
#: Where a cut value ends.
CUT = "~"
#: ANSI colours of the statuses of jobs and runs, on a terminal.
COLOURS = {
    "done": "32",
    "scheduled": "36",
    "running": "1;36",
    "started": "1;36",
    "paused": "35",
    "waiting": "35",
    "failed": "31",
    "timed-out": "31",
    "interrupted": "31",
    "stopped": "2",
    "parked": "33",
    "missed": "33",
    "expired": "33",
    "canceled": "2",
}


class NotFound(Exception):
    """No such job or dead letter (the command exits 1)."""


class Output:
    """Where a command prints: *stream* (default stdout), as JSON or as text."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.colour = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.width = max(shutil.get_terminal_size((WIDTH, 24)).columns, 40) if tty else WIDTH

    def json(self, data: Any) -> None:
        json.dump(data, self.stream, indent=2, default=str)
        self.stream.write("\n")

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def paint(self, text: str, status: str) -> str:
        """*text* in the colour of *status*, on a terminal."""
        code = COLOURS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        flexible: Sequence[int] = (),
        right: Sequence[int] = (),
        status: int | None = None,
    ) -> None:
        """Print *rows* under *headers* within :attr:`width` columns: the
        *flexible* columns (indexes) are cut first, widest first; the *right*
        ones are aligned right; column *status* is coloured by its value."""
        widths = fit(headers, rows, self.width, flexible)
        heads = [cell(head, width, i in right) for i, (head, width) in enumerate(zip(headers, widths, strict=True))]
        self.line(GAP.join(heads).rstrip())
        for row in rows:
            cells = []
            for i, (value, width) in enumerate(zip(row, widths, strict=True)):
                text = cell(value, width, i in right)
                cells.append(self.paint(text, value) if i == status else text)
            self.line(GAP.join(cells).rstrip())


def fit(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, flexible: Sequence[int]) -> list[int]:
    """The width of each column, so that a line fits *width*."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    room = width - len(GAP) * (len(headers) - 1)
    # Cut the flexible columns, widest first, to no less than 8 (or their header);
    # then any column to its header's width.
    for candidates, least in ((list(flexible), 8), (list(range(len(headers))), 0)):
        while sum(widths) > room:
            wide = [i for i in candidates if widths[i] > max(least, len(headers[i]))]
            if not wide:
                break
            widest = max(wide, key=lambda i: widths[i])
            widths[widest] -= 1
    return widths


def cell(value: str, width: int, right: bool = False) -> str:
    if len(value) > width:
        value = value[: max(width - len(CUT), 0)] + CUT if width > len(CUT) else value[:width]
    return value.rjust(width) if right else value.ljust(width)


def ago(stamp: float | None, now: float | None = None) -> str:
    """*stamp* (epoch seconds) relative to now: ``12s ago``, ``in 3m``, ``-``."""
    if stamp is None:
        return "-"
    delta = stamp - (time.time() if now is None else now)
    text = span(max(abs(delta), 1))
    return f"in {text}" if delta > 0.5 else f"{text} ago"


def span(seconds: float) -> str:
    """A duration, short: ``850ms``, ``12s``, ``3m``, ``5h``, ``2d``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= 60):
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def when(stamp: float | None) -> str:
    """*stamp* in local time with its offset, and relative: for details."""
    if stamp is None:
        return "-"
    local = datetime.fromtimestamp(stamp).astimezone()
    return f"{local.isoformat(' ', 'seconds')} ({ago(stamp)})"


#: The cron fields of a trigger spec, in the order they are shown.
CRON_FIELDS = ("year", "month", "week", "day", "day_of_week", "hour", "minute", "second")


def schedule(trigger: dict[str, Any] | None) -> str:
    """A trigger spec in a few words: ``now``, ``at 2024-05-01 10:00``,
    ``every 1h30m``, ``every 5m after each run ends`` (fixed delay),
    ``cron 30 7 * * mon``."""
    if not trigger:
        return "-"
    kind = trigger.get("type")
    if kind == "now":
        return "now"
    if kind == "date":
        return "at " + str(trigger.get("run_date", ""))[:16].replace("T", " ")
    if kind == "interval":
        parts = [
            f"{trigger[key]:g}{key[0]}" for key in ("weeks", "days", "hours", "minutes", "seconds") if trigger.get(key)
        ]
        every = "every " + ("".join(parts) or "0s")
        return every + " after each run ends" if trigger.get("fixed_delay") else every
    if kind == "cron":
        if trigger.get("crontab"):
            return f"cron {trigger['crontab']}"
        return "cron " + " ".join(f"{key}={trigger[key]}" for key in CRON_FIELDS if trigger.get(key) is not None)
    return str(kind)
