"""The settings reference in docs/settings.rst, made from :data:`~pyramid_scheduler.settings.spec.SETTINGS`.

The docs build renders :func:`reference_rst` with the ``scheduler-settings``
directive of docs/conf.py; a test checks the page and the table agree.
"""

from __future__ import annotations

from pyramid_scheduler.settings.spec import SETTINGS
from pyramid_scheduler.settings.values import PREFIX


def reference_rst() -> str:
    """The settings reference: a list-table of every setting, its default,
    the value it takes and what it means (reStructuredText)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 26 18 20 36",
        "",
        "   * - Key",
        "     - Default",
        "     - Value",
        "     - Meaning",
    ]
    for setting in SETTINGS:
        lines.append(f"   * - ``{PREFIX}{setting.key}``")
        lines.append(f"     - {setting.shown_default()}")
        lines.append(f"     - {setting.kind.describe()}")
        doc = setting.doc.splitlines()
        lines.append(f"     - {doc[0]}")
        lines.extend(f"       {line}" for line in doc[1:])
    return "\n".join(lines) + "\n"
