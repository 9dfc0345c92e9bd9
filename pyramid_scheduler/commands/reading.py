"""The reading commands: ``jobs``, ``job``, ``runs``, ``daemons``, ``stats``, ``dead-letters``.

Each reads the job store's database through the web side's proxy
(:class:`~pyramid_scheduler.web.records.JobRecords`) or the ledger's reports
(:class:`~pyramid_scheduler.store.reports.Reports`), and prints with
:class:`~pyramid_scheduler.commands.output.Output`. No daemon needs to run.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from pyramid_scheduler.commands.output import NotFound, Output, ago, schedule, span, when
from pyramid_scheduler.store.tables import FINAL, LIVE


def ledger_of(proxy: Any) -> Any:
    """The proxy's ledger (opened at the first read)."""
    return proxy._ledger()


def jobs(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    records = proxy.get_jobs(args.queue, args.status, args.limit, args.func)
    if out.as_json:
        out.json(records)
        return 0
    if not records:
        out.line("no jobs")
        return 0
    rows = [
        [
            r["id"],
            r["func"].rpartition(":")[2],
            r["queue"],
            schedule(r.get("trigger")),
            r["status"],
            ago(r.get("next_run_time")),
            ago(r.get("last_run_at")),
            str(r["runs"]),
            attempts(r),
        ]
        for r in records
    ]
    headers = ("ID", "FUNCTION", "QUEUE", "SCHEDULE", "STATUS", "NEXT", "LAST", "RUNS", "TRY")
    out.table(headers, rows, flexible=(0, 1, 3, 2), right=(7, 8), status=4)
    return 0


def attempts(record: dict[str, Any]) -> str:
    """``2/4``: the attempt, of those the ``retries`` option allows; ``1`` without retries."""
    if record.get("retries"):
        return f"{record['attempt']}/{record['retries'] + 1}"
    return str(record.get("attempt", 1))


def job_detail(proxy: Any, job_id: str, runs: int) -> dict[str, Any]:
    """One job as ``job --json`` and the dashboard's ``api/jobs/{id}`` show
    it: its record, ``next_fire_times`` (ISO, the next five) and ``history``
    (its latest *runs* runs, oldest first).

    :raises NotFound: the job store has no record of the job.
    """
    record = proxy.get_job(job_id)
    if record is None:
        raise NotFound(f"job {job_id!r}: the job store has no record of it")
    fire_times = proxy.preview_job(job_id, 5)
    history = proxy.get_runs(job_id, limit=runs)
    return {**record, "next_fire_times": [t.isoformat() for t in fire_times], "history": history}


def job(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    detail = job_detail(proxy, args.job_id, args.runs)
    if out.as_json:
        out.json(detail)
        return 0
    record, runs = detail, detail["history"]
    fire_times = [datetime.fromisoformat(t) for t in detail["next_fire_times"]]
    fields = [
        ("id", record["id"]),
        ("function", record["func"]),
        ("queue", record["queue"]),
        ("status", out.paint(record["status"], record["status"])),
        ("schedule", schedule(record.get("trigger"))),
        ("args", json.dumps(record.get("args"))),
        ("kwargs", json.dumps(record.get("kwargs"))),
        ("created", when(record.get("created_at"))),
        ("updated", when(record.get("updated_at"))),
        ("last run", when(record.get("last_run_at"))),
        ("next run", when(record.get("next_run_time"))),
        ("runs", str(record["runs"])),
        ("attempt", attempts(record)),
    ]
    if record.get("retry_at") is not None:
        fields.append(("retry at", when(record["retry_at"])))
    if record.get("status") == "waiting" and record.get("waiting_reason"):
        fields.append(("waiting", str(record["waiting_reason"])))
    if record.get("result") is not None:
        fields.append(("result", json.dumps(record["result"])))
    if record.get("progress"):
        progress = record["progress"]
        fields.append(("progress", f"{progress['fraction']:.0%} {progress['message']} ({when(progress['at'])})"))
    for name, value in fields:
        out.line(f"{name + ':':<10}{value}"[: out.width] if "\x1b" not in value else f"{name + ':':<10}{value}")
    if record.get("error"):
        out.line("error:")
        for text in str(record["error"]).rstrip().splitlines():
            out.line(f"  {text}")
    out.line()
    out.line("next fire times:" if fire_times else "next fire times: none")
    for fire in fire_times:
        out.line(f"  {fire.isoformat(' ', 'seconds')}")
    out.line()
    if not runs:
        out.line("runs: none recorded")
        return 0
    out.line(f"runs (the latest {len(runs)}, oldest first):")
    run_table(out, runs, with_job=False)
    return 0


def run_table(out: Output, runs: list[dict[str, Any]], with_job: bool) -> None:
    rows = []
    for run in runs:
        started, finished = run.get("started_at"), run.get("finished_at")
        took = span(finished - started) if started is not None and finished is not None else "-"
        late = span(max(started - run["scheduled_at"], 0)) if started is not None else "-"
        error = (run.get("error") or "").strip().splitlines()
        row = [
            ago(run["scheduled_at"]),
            run["status"],
            ago(started),
            took,
            late,
            daemon_name(run.get("owner")),
            error[-1] if error else "",
        ]
        rows.append([run["job_id"], *row] if with_job else row)
    headers = ["DUE", "STATUS", "STARTED", "TOOK", "LATE", "DAEMON", "ERROR"]
    if with_job:
        out.table(["JOB", *headers], rows, flexible=(0, 6, 7), right=(4, 5), status=2)
    else:
        out.table(headers, rows, flexible=(5, 6), right=(3, 4), status=1)


def daemon_name(owner: str | None) -> str:
    """``host:pid`` of a daemon's ``host:pid:token``."""
    return ":".join((owner or "-").split(":")[:2])


def runs(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    if args.job_id is not None:
        if args.queue is not None:
            proxy.get_jobs(args.queue, limit=1)  # InvalidQueue for an unknown queue
        found = proxy.get_runs(args.job_id, args.status, args.limit)
        if not found and proxy.get_job(args.job_id) is None:
            raise NotFound(f"job {args.job_id!r}: the job store has no record of it")
        found = [run for run in found if args.queue is None or run["queue"] == args.queue]
        found = [{"job_id": args.job_id, **run} for run in found] if not out.as_json else found
    else:
        if args.queue is not None:
            proxy.get_jobs(args.queue, limit=1)
        found = ledger_of(proxy).recent_runs(args.limit, args.status, args.queue)
    if out.as_json:
        out.json(found)
    elif not found:
        out.line("no runs")
    else:
        run_table(out, found, with_job=True)
    return 0


def daemons(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    queues = proxy.get_daemons()
    if out.as_json:
        out.json(queues)
        return 0
    rows = []
    for queue in queues:
        if not queue["daemons"]:
            rows.append([queue["queue"], "(none)", "", "", "", ""])
        for daemon in queue["daemons"]:
            lease = "yes" if daemon["owner"] == queue["owner"] and (queue["expires_at"] or 0) > time.time() else ""
            rows.append(
                [
                    queue["queue"],
                    daemon_name(daemon["owner"]),
                    daemon["process"] or "-",
                    ago(daemon["started_at"]),
                    ago(daemon["heartbeat_at"]),
                    lease,
                ]
            )
    out.table(("QUEUE", "DAEMON", "PROCESS", "STARTED", "HEARTBEAT", "LEASE"), rows, flexible=(0, 1))
    return 0


def stats_report(proxy: Any, minutes: int) -> dict[str, Any]:
    """``stats --json`` and the dashboard's ``api/stats``: ``minutes``,
    ``since`` (epoch seconds), ``jobs`` (counts by queue and status) and
    ``runs`` (the runs since then by queue and status, with their lateness)."""
    ledger = ledger_of(proxy)
    since = time.time() - minutes * 60
    return {"minutes": minutes, "since": since, "jobs": ledger.job_counts(), "runs": ledger.run_counts(since)}


def stats(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    report = stats_report(proxy, args.minutes)
    if out.as_json:
        out.json(report)
        return 0
    counts, run_counts = report["jobs"], report["runs"]
    statuses = [s for s in (*LIVE, *FINAL) if any(row["status"] == s for row in counts)]
    queues = list(proxy.settings.queues) + sorted({row["queue"] for row in counts} - set(proxy.settings.queues))
    table = {(row["queue"], row["status"]): row["count"] for row in counts}
    rows = []
    for queue in queues:
        numbers = [table.get((queue, status), 0) for status in statuses]
        rows.append([queue, *(str(n) for n in numbers), str(sum(numbers))])
    out.line("jobs:")
    out.table(
        ["QUEUE", *(s.upper() for s in statuses), "TOTAL"], rows, flexible=(0,), right=range(1, len(statuses) + 2)
    )
    out.line()
    out.line(f"runs in the last {args.minutes} minute(s):")
    if not run_counts:
        out.line("  none")
        return 0
    rows = [
        [
            row["queue"],
            row["status"],
            str(row["count"]),
            "-" if row["late_avg"] is None else span(max(row["late_avg"], 0)),
            "-" if row["late_max"] is None else span(max(row["late_max"], 0)),
        ]
        for row in run_counts
    ]
    out.table(("QUEUE", "STATUS", "RUNS", "LATE AVG", "LATE MAX"), rows, flexible=(0,), right=(2, 3, 4), status=1)
    return 0


def dead_letter_list(proxy: Any, limit: int, queue: str | None = None) -> list[dict[str, Any]]:
    """The latest *limit* dead letters (of *queue*), oldest first, each
    with ``whole`` (:func:`with_whole`).

    :raises InvalidQueue: *queue* is not one of ``scheduler.queues``.
    """
    if queue is not None:
        proxy.get_jobs(queue, limit=1)
    return [with_whole(row) for row in ledger_of(proxy).list_dead_letters(limit, queue)]


def dead_letters(proxy: Any, args: argparse.Namespace, out: Output) -> int:
    letters = dead_letter_list(proxy, args.limit, args.queue)
    if out.as_json:
        out.json(letters)
    elif not letters:
        out.line("no dead letters")
    else:
        rows = [
            [str(row["id"]), ago(row["received_at"]), row["queue"], str(row["size"]), row["reason"].splitlines()[0]]
            for row in letters
        ]
        out.table(("ID", "RECEIVED", "QUEUE", "SIZE", "REASON"), rows, flexible=(2, 4), right=(0, 3))
    return 0


def with_whole(row: dict[str, Any]) -> dict[str, Any]:
    """A dead letter with ``whole``: true when its ``body`` is the whole
    message body (it was small enough to be kept whole)."""
    import hashlib

    body = str(row.get("body") or "").encode("utf-8", "surrogatepass")
    return {**row, "whole": hashlib.sha256(body).hexdigest() == row.get("sha256")}
