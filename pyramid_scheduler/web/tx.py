"""Transaction-aware enqueue: hold a checked message until its transaction commits.

:mod:`pyramid_scheduler.web.proxy` checks and encodes every request at call
time, then asks :func:`current_transaction` whether a transaction of the
``transaction`` package is in progress. If one is, :func:`hold` keeps the
encoded message in a :class:`Pending` data manager joined to it: the
messages are published, in call order, by an after-commit hook once the
transaction has committed, and dropped when it aborts, fails to commit, or
is rolled back to a savepoint taken before them -- what pyramid_tm and
pyramid_mailer users expect. Outside a transaction (or with
``immediate=True``, or ``scheduler.transactional = false``) the proxy
publishes at once.

A transaction counts as in progress when the caller names a manager
(``tm=``) that has one open, when pyramid_tm manages the current request
(``request.tm`` while its tween runs; also the request a job gets from the
runner), when the manager the current request's ``request.tm`` handed out
outside the tween (a script's ``with request.tm:``, pshell's
``request.tm.begin()``) has one open, or when the thread's
``transaction.manager`` holds an open one: begun (``with transaction.manager:``, a job's own run) or started
implicitly by a data manager joining it (a zope.sqlalchemy session that was
used), which must then be committed like the session's writes. Merely
asking for the thread manager's transaction here never starts one.

Publishing after the commit can fail (the broker is down past
``scheduler.broker.timeout``); the transaction is already committed by then,
so the failure is logged at ERROR with the job id and the message, never
raised into the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import transaction
from pyramid.threadlocal import get_current_request
from transaction._transaction import Status
from transaction.interfaces import IDataManager, IDataManagerSavepoint, NoTransaction
from zope.interface import implementer

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)

#: ``publish(body, queue, job_id)``: the broker's publish.
Publish = Callable[..., None]


@implementer(IDataManager)
class Pending:
    """The messages held by one transaction, published by its after-commit hook.

    Joined as a data manager only to follow aborts and savepoints: it writes
    nothing during the two-phase commit, so it can never fail one.
    """

    transaction_manager = None

    def __init__(self) -> None:
        #: ``(publish, body, queue, job_id, op, headers)``; *headers*: the trace context or None.
        self.messages: list[tuple[Publish, bytes, str, str, str, dict[str, str] | None]] = []
        #: False once aborted: a savepoint taken before it joined was rolled
        #: back, which also unjoins it; the next message joins it again.
        self.joined = False

    def add(
        self, publish: Publish, body: bytes, queue: str, job_id: str, op: str, headers: dict[str, str] | None = None
    ) -> None:
        self.messages.append((publish, body, queue, job_id, op, headers))

    # -- IDataManager -----------------------------------------------------------------
    def abort(self, txn: Any) -> None:
        self.messages.clear()
        self.joined = False

    tpc_abort = abort

    def tpc_begin(self, txn: Any) -> None:
        pass

    commit = tpc_vote = tpc_finish = tpc_begin

    def sortKey(self) -> str:  # noqa: N802 - the IDataManager name
        return f"~pyramid_scheduler.web.tx:{id(self)}"

    def savepoint(self) -> _Savepoint:
        return _Savepoint(self, len(self.messages))

    def after_commit(self, committed: bool) -> None:
        if not committed:
            for _, _, queue, job_id, op, _ in self.messages:
                log.info("job %s (queue %s): %s not published: the transaction failed to commit", job_id, queue, op)
            return
        for publish, body, queue, job_id, op, headers in self.messages:
            try:
                if headers:
                    publish(body, queue, job_id, headers)
                else:
                    publish(body, queue, job_id)
            except Exception:
                # Committed already: nothing to roll back, so say it loudly and go on.
                log.exception(
                    "job %s (queue %s): %s NOT PUBLISHED after its transaction committed; send it again. Message: %s",
                    job_id,
                    queue,
                    op,
                    body.decode("utf-8", "replace"),
                )
            else:
                log.debug("job %s (queue %s): %s published after commit", job_id, queue, op)


@implementer(IDataManagerSavepoint)
class _Savepoint:
    def __init__(self, pending: Pending, size: int) -> None:
        self.pending = pending
        self.size = size

    def rollback(self) -> None:
        del self.pending.messages[self.size :]


def current_transaction(request: Any = None, manager: Any = None) -> Any:
    """The transaction in progress that a message should wait for, or ``None``.

    :param request: the request to look at (default: the current one).
    :param manager: a ``transaction`` manager the caller named (``tm=``):
        only its transaction counts.
    """
    if manager is not None:
        return open_transaction(manager)
    if request is None:
        request = get_current_request()
    if request is not None:
        if request.environ.get("tm.active"):
            try:
                return request.tm.get()
            except NoTransaction:
                return None
        # Outside pyramid_tm's tween (pshell, bootstrap() and prepare() scripts,
        # the starter's initialize_db): the manager request.tm handed out, if
        # anyone asked for it (pyramid_tm reifies it on the request), such as
        # tm.manager_hook's explicit manager, which is not the thread's.
        given = request.__dict__.get("tm")
        if given is not None:
            txn = open_transaction(given)
            if txn is not None:
                return txn
    return open_transaction(transaction.manager)


def open_transaction(manager: Any) -> Any:
    """*manager*'s transaction if one is open (never starting one), else ``None``."""
    manager = getattr(manager, "manager", manager)  # the thread manager's own, for this thread
    try:
        if getattr(manager, "explicit", False):
            return manager.get()
    except NoTransaction:
        return None
    # An implicit manager: ``get()`` would start a transaction that nobody
    # commits, and there is no public "is one open?", hence ``_txn``.
    # A doomed one still counts: it can only abort, dropping what it holds.
    txn = getattr(manager, "_txn", None)
    if txn is None or txn.status not in (Status.ACTIVE, Status.DOOMED):
        return None
    return txn


def transaction_open(manager: Any = None) -> bool:
    """True while *manager* (default: the thread's ``transaction.manager``)
    has a transaction open that a job could join."""
    return open_transaction(transaction.manager if manager is None else manager) is not None


def transaction_ending(manager: Any = None) -> bool:
    """True while *manager* (default: the thread's ``transaction.manager``)
    still holds a transaction that can no longer be joined nor begun over:
    in its after-commit hooks, where the messages it held are published."""
    manager = transaction.manager if manager is None else manager
    manager = getattr(manager, "manager", manager)  # the thread manager's own, for this thread
    txn = getattr(manager, "_txn", None)  # as open_transaction: no public "is one open?"
    return txn is not None and txn.status not in (Status.ACTIVE, Status.DOOMED)


def hold(
    txn: Any, publish: Publish, body: bytes, queue: str, job_id: str, op: str, headers: dict[str, str] | None = None
) -> None:
    """Publish *body* (with *headers*, when given) when *txn* commits (nothing if it aborts)."""
    try:
        pending = txn.data(Pending)
    except KeyError:
        pending = Pending()
        txn.set_data(Pending, pending)
        txn.addAfterCommitHook(pending.after_commit)
    if not pending.joined:
        txn.join(pending)
        pending.joined = True
    pending.add(publish, body, queue, job_id, op, headers)
    log.debug("job %s (queue %s): %s held until the transaction commits", job_id, queue, op)


def check_delivery(immediate: Any, manager: Any) -> None:
    """Check the ``immediate`` and ``tm`` arguments of a call that publishes.

    :raises InvalidJob: naming the argument.
    """
    if not isinstance(immediate, bool):
        raise InvalidJob(f"immediate: expected True or False, got {immediate!r}")
    if manager is None:
        return
    if immediate:
        raise InvalidJob(
            "tm: the message waits for this transaction manager's commit, and "
            "immediate=True publishes it at once; pass one or the other"
        )
    if not (callable(getattr(manager, "get", None)) and callable(getattr(manager, "begin", None))):
        raise InvalidJob(
            f"tm: expected a transaction manager (such as request.tm or "
            f"transaction.TransactionManager()), got {manager!r:.80}"
        )
