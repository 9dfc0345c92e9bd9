"""The settings of flow control: priorities (:mod:`pyramid_scheduler.daemon.flow`).

:data:`SETTINGS_FLOW` is appended to
:data:`pyramid_scheduler.settings.spec.SETTINGS`, the one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyramid_scheduler.settings.values import Duration, Setting, bad


@dataclass(frozen=True)
class QueuePriority:
    """``priority.QUEUE``: the default priority of a queue's jobs, 0 to 9."""

    def parse(self, key: str, value: Any) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise bad(key, value, "a whole number from 0 to 9 (higher runs first)") from None
        if not 0 <= number <= 9:
            raise bad(key, value, "a whole number from 0 to 9 (higher runs first)")
        return number

    def name(self, key: str) -> str:
        """The queue's name: the key after ``priority.``."""
        return key[len("priority.") :]

    def describe(self) -> str:
        return "Whole number from 0 to 9, for a queue of ``queues``"


SETTINGS_FLOW: tuple[Setting, ...] = (
    Setting(
        "priority.*",
        QueuePriority(),
        field="priorities",
        default_doc="0",
        doc="""``scheduler.priority.QUEUE = 5``: the priority of the jobs of queue ``QUEUE``
that do not give one (``priority=`` of ``add_*_job``); 0 when not set. Among the runs
waiting for a worker, the higher priority starts first. ``QUEUE`` must be one of
``queues``. See :ref:`flow-priorities`.""",
    ),
    Setting(
        "priority_aging",
        Duration(above_zero=True),
        default="60",
        doc="""How long a run may wait for a worker before it goes ahead of every run that
has waited less, whatever their priorities (the oldest first): no priority starves the
others for ever. See :ref:`flow-priorities`.""",
    ),
)
