"""The context of a run: the application's registry, a transaction, a request.

Beneath execution (:mod:`.execution`), which enters one of these around each
call of a job function, and shared with :mod:`pyramid_scheduler.testing`
(through :mod:`.stepped`), so a job runs in the same context in the daemon,
in combined mode and under the testing kit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pyramid.scripting import prepare
from pyramid.threadlocal import manager as threadlocal_manager

try:
    import transaction
except ImportError:  # pragma: no cover - transaction is optional
    transaction = None


@contextlib.contextmanager
def job_context(registry: Any, own_transaction: bool = True) -> Iterator[None]:
    """Around one run: *registry* as the current one, inside
    ``transaction.manager`` when the ``transaction`` package is installed and
    *own_transaction* is true (shared by the daemon and
    :mod:`pyramid_scheduler.testing`)."""
    threadlocal_manager.push({"registry": registry, "request": None})
    try:
        if transaction is not None and own_transaction:
            with transaction.manager:
                yield
        else:  # pragma: no cover
            yield
    finally:
        threadlocal_manager.pop()


@contextlib.contextmanager
def request_context(registry: Any) -> Iterator[Any]:
    """A request for the application, current for the run, inside its
    ``request.tm`` (pyramid_tm) or ``transaction.manager``; its finished
    callbacks run and the threadlocals are popped afterwards (shared by the
    daemon and :mod:`pyramid_scheduler.testing`)."""
    with prepare(registry=registry) as env:
        request = env["request"]
        try:
            manager = request.tm
        except AttributeError:  # pyramid_tm is not included
            manager = transaction.manager
        # The runner plays pyramid_tm's tween: code that asks whether a
        # transaction is managed for this request (pyramid_tm.is_tm_active,
        # add_*_job) gets yes.
        request.environ["tm.active"] = True
        try:
            with manager:
                yield request
        finally:
            del request.environ["tm.active"]
