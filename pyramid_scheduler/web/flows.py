"""Chains and groups, the producer's side: ``scheduler.step``, ``chain`` and ``group``.

:class:`FlowMethods` gives :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`
its three methods, and :meth:`FlowMethods.then_flow` the ``then=`` of
``add_async_job`` and ``add_date_job``. A :class:`Step` is a checked call,
not yet a job; :meth:`~FlowMethods.chain` and :meth:`~FlowMethods.group`
give each step its job id (``<flow id>-<position>``, a group's then step
``<flow id>-then``) and publish what starts the flow -- a chain's first
step, carrying the steps after it; each member of a group, carrying the
``then`` step -- as ``add_async_job`` publishes a job (inside the
transaction, and so on). The rest is made in the job store as steps end
(:mod:`pyramid_scheduler.store.flows`); the wire form is
:mod:`pyramid_scheduler.wire.flows`. See :doc:`/flow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pyramid_scheduler.exceptions import InvalidJob, InvalidQueue
from pyramid_scheduler.wire.flows import MAX_STEPS, STEP_REFUSED
from pyramid_scheduler.wire.messages import check_json, check_name, new_id
from pyramid_scheduler.wire.options import option_problem
from pyramid_scheduler.wire.refs import callable_ref, check_arguments, resolve_ref

#: The first argument a step after the first is checked with (its real one
#: is the previous result, or a group's results).
PLACEHOLDER = object()


@dataclass(frozen=True)
class Step:
    """A call to make as a step of a chain or group: ``scheduler.step(func,
    *args, **kwargs)``, with job options by :meth:`options`."""

    #: ``module:qualname``.
    func: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: The queue it runs on (None: ``scheduler.default_queue``).
    queue: str | None = None
    #: Its job options (``retries``, ``name``, ``ttl``, ...).
    job_options: dict[str, Any] = field(default_factory=dict)
    #: The queues it may name (``scheduler.queues``).
    queues: tuple[str, ...] = ()

    def options(self, queue: str | None = None, **options: Any) -> Step:
        """This step with a *queue* and job *options* (those of
        ``add_async_job``: ``retries``, ``retry_delay``, ``name``, ``ttl``, ...;
        not ``durable`` or ``id``).

        :raises InvalidQueue: *queue* is not in ``scheduler.queues``.
        :raises InvalidJob: naming the option refused.
        """
        if queue is not None and queue not in self.queues:
            raise InvalidQueue(queue, self.queues)
        merged = {**self.job_options, **options}
        for key in (*STEP_REFUSED, "id", "immediate", "tm"):
            if key in options:
                raise InvalidJob(
                    f"{key}: not an option of a step ({self.func}); a step is a durable run-now job "
                    "whose id its chain or group gives (pass immediate= and tm= to chain() or group())"
                )
        problem = option_problem(merged, "now")
        if problem:
            raise InvalidJob(f"step {self.func}: {problem}")
        return replace(self, queue=queue if queue is not None else self.queue, job_options=merged)


@dataclass(frozen=True)
class Flow:
    """What :meth:`FlowMethods.chain` and :meth:`FlowMethods.group` return:
    the flow's id and its jobs' ids (``get_job`` reads each)."""

    id: str
    #: ``chain`` or ``group``.
    kind: str
    #: A chain's steps in order; a group's members in order.
    job_ids: tuple[str, ...]
    #: A group's then step (None: none, or a chain).
    then_id: str | None = None

    @property
    def last(self) -> str:
        """The id of the job whose result is the flow's: a chain's last step,
        a group's then step (else its last member)."""
        return self.then_id or self.job_ids[-1]

    def __str__(self) -> str:
        return self.id


class FlowMethods:
    """``step``, ``chain`` and ``group`` of :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`."""

    settings: Any

    def _add(self, *args: Any, **kwargs: Any) -> str:  # pragma: no cover - SchedulerProxy's
        raise NotImplementedError

    def now(self) -> Any:  # pragma: no cover - SchedulerProxy's
        raise NotImplementedError

    def step(self, func: Any, *args: Any, **kwargs: Any) -> Step:
        """A call of ``func(*args, **kwargs)`` to make as a step of a
        :meth:`chain` or :meth:`group` (or the ``then=`` of ``add_async_job``);
        job options with :meth:`Step.options`.

        The function is checked as ``add_async_job`` checks it, the arguments
        are to be JSON; a step that takes a previous result is checked with
        that first argument when its chain or group is made.

        :raises InvalidJob: the function or an argument is refused.
        """
        ref = callable_ref(func, self.settings.allowed_modules)
        args_json = check_json(list(args), "args")
        kwargs_json = check_json(dict(kwargs), "kwargs")
        return Step(ref, tuple(args_json), kwargs_json, queues=self.settings.queues)

    def chain(self, *steps: Step, immediate: bool = False, tm: Any = None) -> Flow:
        """Run *steps* one after the other, each next one with the previous
        one's result as its first argument (see :doc:`/flow`): the first is
        published now (as ``add_async_job`` publishes, inside the
        transaction), each next one is made in the job store when the
        previous one succeeds. A step that fails after its retries (or is
        missed, interrupted or canceled) ends the chain: the later steps are
        recorded ``canceled`` with the reason.

        :returns: the :class:`Flow` (its ``id`` and its steps' job ids).
        :raises InvalidJob: a step is refused (not a :class:`Step`, too many,
            a function that cannot take the previous result).
        """
        self._check_steps(steps, "chain")
        flow_id = new_id()
        ids = tuple(f"{flow_id}-{index}" for index in range(len(steps)))
        for index, step in enumerate(steps):
            self._check_call(step, index > 0)
        following = [self._wire_step(step, job_id) for step, job_id in zip(steps[1:], ids[1:], strict=True)]
        flow = {"id": flow_id, "kind": "chain", "position": 0, "next": following}
        self._start(steps[0], ids[0], flow, immediate, tm)
        return Flow(flow_id, "chain", ids)

    def group(self, steps: list[Step], then: Step | None = None, immediate: bool = False, tm: Any = None) -> Flow:
        """Run *steps* side by side (as jobs of their queues, shared out among
        the daemons), then, once every one of them ended, *then* once with
        their results as its first argument, a list in the order of *steps*.
        If a member ends otherwise than ``done`` (failed after its retries,
        missed, interrupted, canceled), *then* is recorded ``canceled`` with
        the reason naming it; the other members run on (see :doc:`/flow`).

        :returns: the :class:`Flow` (the members' job ids, ``then_id``).
        :raises InvalidJob: a step is refused.
        """
        if not isinstance(steps, (list, tuple)):
            raise InvalidJob(f"group: expected a list of steps, got {type(steps).__name__}")
        self._check_steps(tuple(steps), "group")
        if then is not None:
            self._check_steps((then,), "group then")
            self._check_call(then, True)
        flow_id = new_id()
        ids = tuple(f"{flow_id}-{index}" for index in range(len(steps)))
        then_id = f"{flow_id}-then" if then is not None else None
        then_wire = self._wire_step(then, then_id) if then is not None and then_id else None
        for step in steps:
            self._check_call(step, False)
        for index, (step, job_id) in enumerate(zip(steps, ids, strict=True)):
            flow = {"id": flow_id, "kind": "group", "position": index, "size": len(steps), "then": then_wire}
            self._start(step, job_id, flow, immediate, tm)
        return Flow(flow_id, "group", ids, then_id)

    def then_flow(self, job_id: str, then: Any) -> dict[str, Any]:
        """The ``flow`` option of a job added with ``then=step``: a chain of
        two, the job and *then* (job id ``<job id>-then``)."""
        self._check_steps((then,), "then")
        self._check_call(then, True)
        step = self._wire_step(then, check_name(f"{job_id}-then", "id"))
        return {"id": job_id, "kind": "chain", "position": 0, "next": [step]}

    # -- the parts ------------------------------------------------------------------
    def _check_steps(self, steps: tuple[Any, ...], what: str) -> None:
        if not steps:
            raise InvalidJob(f"{what}: expected at least one step")
        if len(steps) > MAX_STEPS:
            raise InvalidJob(f"{what}: {len(steps)} steps, more than {MAX_STEPS}")
        for index, step in enumerate(steps):
            if not isinstance(step, Step):
                raise InvalidJob(f"{what}: step {index} is a {type(step).__name__}, not scheduler.step(func, ...)")
        if self.settings.memory_store:
            raise InvalidJob(
                f"{what}: needs the SQL job store, which keeps the steps; scheduler.jobstore.url is 'memory'"
            )

    def _check_call(self, step: Step, takes_result: bool) -> None:
        """The step's function takes its arguments (and first the previous result)."""
        args = [PLACEHOLDER, *step.args] if takes_result else list(step.args)
        check_arguments(resolve_ref(step.func), args, step.kwargs, step.func)

    def _wire_step(self, step: Step, job_id: str) -> dict[str, Any]:
        queue = step.queue if step.queue is not None else self.settings.default_queue
        return {
            "id": job_id,
            "queue": queue,
            "func": step.func,
            "args": list(step.args),
            "kwargs": step.kwargs,
            "options": dict(step.job_options),
        }

    def _start(self, step: Step, job_id: str, flow: dict[str, Any], immediate: bool, tm: Any) -> None:
        options = {**step.job_options, "id": job_id, "flow": flow, "immediate": immediate, "tm": tm}
        self._add("now", step.func, step.args, step.kwargs, step.queue, options, run_date=self.now())
