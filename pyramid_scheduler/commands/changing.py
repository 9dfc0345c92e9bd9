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


def change(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    """Check the job's record, publish the request, say who will carry it out."""
    statuses, method, what = CHANGES[args.command]
    record = proxy.get_job(args.job_id)
    if record is None:
        raise NotFound(f"job {args.job_id!r}: the job store has no record of it")
    if record["status"] not in statuses:
        raise InvalidJob(
            f"job {args.job_id!r} is {record['status']}; {what} applies to {' or '.join(statuses)} jobs only"
        )
    queue = record["queue"]
    if method == "cancel_job":
        proxy.cancel_job(args.job_id, queue=queue, immediate=True)
    else:
        getattr(proxy, method)(args.job_id)
    serving = next((len(row["daemons"]) for row in proxy.get_daemons() if row["queue"] == queue), 0)
    if out.as_json:
        out.json(
            {"id": args.job_id, "queue": queue, "request": args.command, "status": record["status"], "daemons": serving}
        )
        return 0
    out.line(f"{what} of job {args.job_id} sent to queue {queue}")
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


def delete_dead_letter(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    if not proxy._ledger().delete_dead_letter(args.letter_id):
        raise NotFound(f"dead letter {args.letter_id}: no such dead letter")
    if out.as_json:
        out.json({"id": args.letter_id, "deleted": True})
    else:
        out.line(f"dead letter {args.letter_id} deleted")
    return 0


def replay_dead_letter(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    try:
        job_id = proxy.replay_dead_letter(args.letter_id, force=args.force)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    if out.as_json:
        out.json({"id": args.letter_id, "replayed": True, "job_id": job_id})
    else:
        out.line(f"dead letter {args.letter_id} replayed as job {job_id}, and deleted")
    return 0
