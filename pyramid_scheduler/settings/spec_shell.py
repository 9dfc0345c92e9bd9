"""The settings of shell-command jobs (:mod:`pyramid_scheduler.shell`).

:data:`SHELL_SETTINGS` is appended to
:data:`pyramid_scheduler.settings.spec.SETTINGS`, the one table of settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyramid_scheduler.settings.values import Setting, bad

#: Longest pattern of ``scheduler.shell.allowed``, and most patterns.
PATTERN_LENGTH = 1000
PATTERNS = 1000


@dataclass(frozen=True)
class Patterns:
    """Command patterns, one per line (a pattern may hold blanks)."""

    def parse(self, key: str, value: Any) -> tuple[str, ...]:
        patterns = tuple(line.strip() for line in str(value).splitlines() if line.strip())
        if len(patterns) > PATTERNS or any(len(pattern) > PATTERN_LENGTH for pattern in patterns):
            raise bad(key, value, f"at most {PATTERNS} patterns of at most {PATTERN_LENGTH} characters")
        return patterns

    def describe(self) -> str:
        return "Command patterns, one per line"


SHELL_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "shell.allowed",
        Patterns(),
        default_doc="empty (no command may run)",
        doc="""The commands :func:`pyramid_scheduler.shell.run` may run, one glob pattern
per line. A pattern without a blank matches the program (``pg_dump``, ``/usr/bin/*``; a
pattern without ``/`` only matches a program found on ``PATH``); one with a blank
matches the whole command line after its placeholders are filled (``pg_dump *``). A
``shell=True`` command must be listed exactly as written. Checked by ``add_*_job``, by
the daemon at its door and as each run starts; see :doc:`shell`.""",
    ),
)
