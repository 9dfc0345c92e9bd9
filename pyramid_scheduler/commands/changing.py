"""The changing commands: ``cancel``, ``pause``, ``resume``, ``run``, ``retry``, ``purge``,
``dead-letters replay`` and ``dead-letters delete``.

A job is changed the way a view changes it: the command checks the job's
record, then publishes one message through the proxy
(:class:`~pyramid_scheduler.web.proxy.SchedulerProxy`) and the daemon of
the job's queue does the work; the command says whether a live daemon
serves that queue. ``purge`` is the daemon's own housekeeping purge
(:func:`~pyramid_scheduler.daemon.housekeeping.purge_finished`), which only
forgets finished records; ``dead-letters replay`` publishes a dead letter's
message again through the proxy
(:meth:`~pyramid_scheduler.web.manage.JobManagement.replay_dead_letter`), and
``dead-letters delete`` forgets a dead letter.
"""

from __future__ import annotations

import argparse
from typing import Any

from pyramid_scheduler.commands.output import NotFound, Output
from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.store.tables import LIVE

#: For each command: the statuses of the jobs it applies to, the proxy's
#: method, and what it is called in messages.
CHANGES = {
    "cancel": ((*LIVE, "parked"), "cancel_job", "cancel"),
    "pause": (("scheduled", "running", "waiting"), "pause_job", "pause"),
    "resume": (("paused",), "resume_job", "resume"),
    "run": (("scheduled", "running", "waiting"), "run_job_now", "run now"),
    "retry": (("failed", "interrupted", "parked"), "retry_job", "retry"),
}


def request_change(proxy: Any, command: str, job_id: str) -> dict[str, Any]:
    """Check the job's record and publish the request *command* (a key of
    :data:`CHANGES`): what ``cancel --json`` and the dashboard's
    ``api/jobs/{id}/cancel`` answer (``id``, ``queue``, ``request``, the job's
    ``status`` when asked, and the number of live ``daemons`` serving its queue).

    :raises NotFound: the job store has no record of the job.
    :raises InvalidJob: the job's status is not one the request applies to.
    """
    statuses, method, what = CHANGES[command]
    record = proxy.get_job(job_id)
    if record is None:
        raise NotFound(f"job {job_id!r}: the job store has no record of it")
    if record["status"] not in statuses:
        raise InvalidJob(f"job {job_id!r} is {record['status']}; {what} applies to {' or '.join(statuses)} jobs only")
    queue = record["queue"]
    if method == "cancel_job":
        proxy.cancel_job(job_id, queue=queue, immediate=True)
    else:
        getattr(proxy, method)(job_id)
    serving = next((len(row["daemons"]) for row in proxy.get_daemons() if row["queue"] == queue), 0)
    return {"id": job_id, "queue": queue, "request": command, "status": record["status"], "daemons": serving}


def change(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    """Check the job's record, publish the request, say who will carry it out."""
    answer = request_change(proxy, args.command, args.job_id)
    if out.as_json:
        out.json(answer)
        return 0
    queue, serving = answer["queue"], answer["daemons"]
    out.line(f"{CHANGES[args.command][2]} of job {args.job_id} sent to queue {queue}")
    if serving:
        out.line(f"{serving} live daemon(s) serve the queue; the 'job' command shows the outcome")
    else:
        out.line(f"no live daemon serves queue {queue}: the request waits in the broker until one starts")
    return 0


cancel = pause = resume = run = retry = change


def purge(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    from pyramid_scheduler.daemon.housekeeping import purge_finished

    count = purge_finished(proxy._ledger(), proxy.settings)
    if out.as_json:
        out.json({"purged": count, "result_ttl": proxy.settings.result_ttl})
    else:
        out.line(
            f"{count} finished job record(s) purged (older than scheduler.result_ttl, {proxy.settings.result_ttl:g}s)"
        )
    return 0


def forget_dead_letter(proxy: Any, letter_id: int) -> dict[str, Any]:
    """Delete one dead letter: ``dead-letters delete --json``'s answer and
    the dashboard's.

    :raises NotFound: there is no such dead letter.
    """
    if not proxy._ledger().delete_dead_letter(letter_id):
        raise NotFound(f"dead letter {letter_id}: no such dead letter")
    return {"id": letter_id, "deleted": True}


def delete_dead_letter(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    answer = forget_dead_letter(proxy, args.letter_id)
    if out.as_json:
        out.json(answer)
    else:
        out.line(f"dead letter {args.letter_id} deleted")
    return 0


def replay_letter(proxy: Any, letter_id: int, force: bool = False) -> dict[str, Any]:
    """Replay one dead letter (:meth:`~pyramid_scheduler.web.manage.JobManagement.replay_dead_letter`):
    ``dead-letters replay --json``'s answer and the dashboard's.

    :raises NotFound: there is no such dead letter.
    :raises InvalidJob: it cannot be replayed (the message says why).
    """
    try:
        job_id = proxy.replay_dead_letter(letter_id, force=force)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return {"id": letter_id, "replayed": True, "job_id": job_id}


def replay_dead_letter(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    answer = replay_letter(proxy, args.letter_id, args.force)
    if out.as_json:
        out.json(answer)
    else:
        out.line(f"dead letter {args.letter_id} replayed as job {answer['job_id']}, and deleted")
    return 0
