"""Alembic: keep the application's migrations away from the scheduler's tables.

When the job store (or the SQL broker) shares the application's database --
``scheduler.jobstore.url = %(sqlalchemy.url)s``, natural in an app made from
the Pyramid starter -- ``alembic revision --autogenerate`` compares the
database with the application's models, finds the scheduler's tables, which
no model declares, and proposes to drop them. The scheduler creates and
upgrades its own tables (see :doc:`/deployment`); these hooks tell Alembic
to leave them out, in the application's ``alembic/env.py``::

    import pyramid_scheduler.alembic

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        **pyramid_scheduler.alembic.filters(settings),
    )

:func:`filters` reads ``scheduler.jobstore.tablename_prefix`` from the
application's settings; :func:`include_name` and :func:`include_object` are
the same hooks for the default prefix, for an ``env.py`` that passes them
itself. An application with hooks of its own combines them::

    hooks = pyramid_scheduler.alembic.filters(settings)

    def include_name(name, type_, parent_names):
        return hooks["include_name"](name, type_, parent_names) and my_rule(name)

The module imports nothing of Alembic: it only answers its questions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: The job store's table-name prefix when ``scheduler.jobstore.tablename_prefix`` is not set.
DEFAULT_PREFIX = "pyramid_scheduler_"
#: The SQL broker's one table (``scheduler.broker.url`` on a SQL database).
BROKER_TABLE = "pyramid_scheduler_messages"


def is_scheduler_table(name: str | None, prefix: str = DEFAULT_PREFIX) -> bool:
    """True if the table *name* belongs to pyramid_scheduler: the job store's
    tables (``<prefix>jobs``, ``<prefix>runs``, ``<prefix>aps_<queue>``, ...)
    and the SQL broker's."""
    if not name:
        return False
    lowered = name.lower()  # PostgreSQL folds unquoted names; reflection may give either
    return lowered.startswith(prefix.lower()) or lowered == BROKER_TABLE


def filters(settings: Mapping[str, Any] | None = None) -> dict[str, Callable[..., bool]]:
    """``include_name`` and ``include_object`` for ``context.configure`` that
    leave out the scheduler's tables, with the prefix of *settings*
    (the application's, e.g. from ``pyramid.paster.get_appsettings``)."""
    prefix = str((settings or {}).get("scheduler.jobstore.tablename_prefix") or DEFAULT_PREFIX).strip()

    def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        if type_ == "table":
            return not is_scheduler_table(name, prefix)
        return not is_scheduler_table((parent_names or {}).get("table_name"), prefix)

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return not is_scheduler_table(name, prefix)
        table = getattr(obj, "table", None)  # a column, index or constraint: its table's
        return table is None or not is_scheduler_table(getattr(table, "name", None), prefix)

    return {"include_name": include_name, "include_object": include_object}


_default = filters()
#: Alembic's ``include_name`` hook, for the default table-name prefix.
include_name = _default["include_name"]
#: Alembic's ``include_object`` hook, for the default table-name prefix.
include_object = _default["include_object"]
