"""The settings of the flow limits (:mod:`pyramid_scheduler.daemon.limits`).

:data:`SETTINGS_LIMITS` is appended to
:data:`pyramid_scheduler.settings.spec.SETTINGS`, the one table.
"""

from __future__ import annotations

from pyramid_scheduler.settings.values import Duration, Setting

SETTINGS_LIMITS: tuple[Setting, ...] = (
    Setting(
        "limits.poll",
        Duration(minimum=0.05),
        default="1",
        doc="""How long a run held back by ``max_concurrency`` waits before it asks for a
slot again: it is stored back in its queue's job store due that many seconds later (plus
up to half as much again, at random, so that the held runs of several daemons do not all
ask at once), and the job shows ``waiting`` meanwhile. Shorter: a freed slot is taken
sooner, for more reads of the job store. See :ref:`flow-concurrency`.""",
    ),
)
