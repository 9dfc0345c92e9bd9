"""Chains and groups on the wire: the ``flow`` option of a step's request.

A job that belongs to a chain or a group carries, in its request's
``"options"``, the part of the flow still to come (see :doc:`/flow`)::

    "flow": {"id": "<flow id>", "kind": "chain", "position": 0,
             "next": [<step>, ...]}             # a chain's steps after this one
    "flow": {"id": "<flow id>", "kind": "group", "position": 2, "size": 4,
             "then": <step> | null}             # a member of a group of 4
    "flow": {"id": "<flow id>", "kind": "then", "position": 4}
                                                # a group's then step

and a step is ``{"id", "queue", "func", "args", "kwargs", "options"}``: a
run-now request still to be made, whose first argument will be the previous
step's result (a chain) or the members' results (a group's ``then``).

:func:`flow_problem` is the one check of that option, asked by the producer
and at the daemon's door (:func:`pyramid_scheduler.wire.messages.decode`),
so a flow read back from the job store was checked as every message is;
:func:`next_request` makes the request of a step when it is handed over
(:mod:`pyramid_scheduler.store.flows`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pyramid_scheduler.wire.options import option_problem

#: Most steps of a chain, and most members of a group.
MAX_STEPS = 100
#: The kinds of flow a job can belong to.
FLOW_KINDS = ("chain", "group", "then")
#: The keys of a step, and of each kind of ``flow`` option.
STEP_KEYS = frozenset({"id", "queue", "func", "args", "kwargs", "options"})
FLOW_KEYS = {
    "chain": frozenset({"id", "kind", "position", "next"}),
    "group": frozenset({"id", "kind", "position", "size", "then"}),
    "then": frozenset({"id", "kind", "position"}),
}
#: Options a step may not take: a step is a durable run-now job of its flow.
STEP_REFUSED = ("durable", "catch_up", "flow")


def flow_problem(flow: Any, kind: str | None = "now") -> str | None:
    """What is wrong with a request's ``flow`` option, or None (see the
    module); *kind* is the request's trigger type (a flow's jobs are one-off).

    :returns: a message naming the first field at fault.
    """
    if flow is None:
        return None
    if kind not in ("now", "date"):
        return f"then: only one-off jobs (add_async_job, add_date_job) start a chain, not {kind} jobs"
    if not isinstance(flow, Mapping):
        return f"flow: expected an object, got {flow!r:.80}"
    kind = flow.get("kind")
    if kind not in FLOW_KINDS:
        return f"flow.kind: expected one of {', '.join(FLOW_KINDS)}, got {kind!r:.80}"
    if set(flow) != FLOW_KEYS[kind]:
        return (
            f"flow: a {kind} step's flow has the keys {', '.join(sorted(FLOW_KEYS[kind]))}, got {sorted(flow)!r:.200}"
        )
    problem = _name_problem(flow["id"], "flow.id") or _count_problem(flow["position"], "flow.position", 0, MAX_STEPS)
    if problem:
        return problem
    if kind == "chain":
        steps = flow["next"]
        if not isinstance(steps, list) or flow["position"] + len(steps) >= MAX_STEPS:
            return f"flow.next: expected a list of at most {MAX_STEPS} steps in all, got {steps!r:.80}"
        for index, step in enumerate(steps):
            problem = step_problem(step, f"flow.next[{index}]")
            if problem:
                return problem
    elif kind == "group":
        problem = _count_problem(flow["size"], "flow.size", 1, MAX_STEPS)
        if problem:
            return problem
        if flow["position"] >= flow["size"]:
            return f"flow.position: {flow['position']} is not below the group's size {flow['size']}"
        if flow["then"] is not None:
            return step_problem(flow["then"], "flow.then")
    return None


def step_problem(step: Any, where: str) -> str | None:
    """What is wrong with one step still to be made (see the module), or None."""
    if not isinstance(step, Mapping) or set(step) != STEP_KEYS:
        return f"{where}: expected a step with the keys {', '.join(sorted(STEP_KEYS))}, got {step!r:.80}"
    for key in ("id", "queue", "func"):
        problem = _name_problem(step[key], f"{where}.{key}", 500 if key == "func" else 200)
        if problem:
            return problem
    if not isinstance(step["args"], list) or not isinstance(step["kwargs"], dict):
        return f"{where}: args must be a list and kwargs an object"
    options = step["options"]
    if not isinstance(options, dict):
        return f"{where}.options: expected an object, got {options!r:.80}"
    for key in STEP_REFUSED:
        if key in options:
            return f"{where}.options: {key} is not an option of a step (a step is a durable run-now job)"
    problem = option_problem(options, "now")
    return f"{where}.options: {problem}" if problem else None


def _name_problem(value: Any, where: str, longest: int = 200) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        return f"{where}: expected a string of 1 to {longest} characters, got {value!r:.80}"
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
        return f"{where}: {value!r:.80} holds a control character"
    return None


def _count_problem(value: Any, where: str, least: int, most: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        return f"{where}: expected a whole number from {least} to {most}, got {value!r:.80}"
    return None


def flow_of(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``flow`` option of a wire request, or None."""
    flow = (request.get("options") or {}).get("flow")
    return flow if isinstance(flow, dict) else None


def steps_of(flow: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The steps still to be made that a (checked) ``flow`` option carries."""
    if flow is None:
        return []
    if flow["kind"] == "chain":
        return list(flow["next"])
    return [flow["then"]] if flow["kind"] == "group" and flow["then"] is not None else []


def children(flow: Mapping[str, Any] | None) -> list[str]:
    """The ids of the jobs a step hands over to: a chain step's next step,
    a group member's ``then`` step (none for the last step, or a ``then``)."""
    if flow is None:
        return []
    if flow["kind"] == "chain" and flow["next"]:
        return [flow["next"][0]["id"]]
    if flow["kind"] == "group" and flow["then"] is not None:
        return [flow["then"]["id"]]
    return []


def next_request(step: Mapping[str, Any], first: Any, flow: dict[str, Any], mid: str, at: float) -> dict[str, Any]:
    """The run-now request of *step*, made at *at* (epoch seconds): *first*
    (the previous result, or the members' results) before its own arguments,
    and its own *flow* option."""
    when = datetime.fromtimestamp(at, timezone.utc).isoformat()
    return {
        "v": 1,
        "op": "add",
        "mid": mid,
        "id": step["id"],
        "queue": step["queue"],
        "sent_at": when,
        "func": step["func"],
        "args": [first, *step["args"]],
        "kwargs": step["kwargs"],
        "trigger": {"type": "now", "timezone": "UTC", "run_date": when},
        "options": {**step["options"], "flow": flow},
    }


def encoded_size(request: Mapping[str, Any]) -> int:
    """The size in bytes of *request* as the wire sends it."""
    return len(json.dumps(request, separators=(",", ":")).encode())
