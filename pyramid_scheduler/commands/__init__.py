"""``pscheduler CONFIG-URI COMMAND``: the operator's commands.

Beside the daemon (:mod:`pyramid_scheduler.scripts`, which parses the
command line with the parser this module completes). A command reads the
``scheduler.*`` settings of the application's section of the INI file --
without loading the application -- and makes the web side's
:class:`~pyramid_scheduler.web.proxy.SchedulerProxy` from them: it reads
the job store through the proxy and the ledger (no daemon needs to run),
and asks for changes to jobs the way a view does, by publishing a message
that the daemon carries out. It imports nothing of the daemon. The reading
commands are in :mod:`pyramid_scheduler.commands.reading`, the changing
ones in :mod:`pyramid_scheduler.commands.changing`, the printing in
:mod:`pyramid_scheduler.commands.output`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pyramid_scheduler.commands import changing, reading
from pyramid_scheduler.commands.output import NotFound, Output
from pyramid_scheduler.exceptions import InvalidJob, InvalidQueue, SchedulerError
from pyramid_scheduler.store.tables import FINAL, LIVE, RUN_STATUSES

#: Exit codes of the commands: done; no such job (or dead letter), or it
#: is not in a state the command applies to; a bad command line; the
#: settings, the job store or the broker failed.
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_FAILED = 20

#: Each command's function: (proxy, arguments, output) -> exit code.
COMMANDS: dict[str, Callable[[Any, argparse.Namespace, Output], int]] = {
    "jobs": reading.jobs,
    "job": reading.job,
    "runs": reading.runs,
    "daemons": reading.daemons,
    "stats": reading.stats,
    "dead-letters": lambda proxy, args, out: {
        "delete": changing.delete_dead_letter,
        "replay": changing.replay_dead_letter,
    }.get(args.action, reading.dead_letters)(proxy, args, out),
    "cancel": changing.cancel,
    "pause": changing.pause,
    "resume": changing.resume,
    "run": changing.run,
    "retry": changing.retry,
    "purge": changing.purge,
}


def positive(text: str) -> int:
    """``--limit``, ``--processes`` and the like: a whole number, at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return number


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the commands to ``pscheduler``'s parser (without one, it runs the daemon)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (an array for a list, an object for one item)")
    commands = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        title="commands (without one, pscheduler runs the daemon)",
        description="read the job store, or ask the daemons to change a job; "
        "'pscheduler CONFIG-URI COMMAND --help' for the options of each",
    )

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=text, description=text)

    def job_id(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("job_id", metavar="ID", help="the job id")

    sub = command("jobs", "list the jobs, most recently changed first")
    sub.add_argument("--status", choices=(*LIVE, *FINAL), metavar="STATUS", help="only the jobs in this status")
    sub.add_argument("--queue", metavar="NAME", help="only the jobs of this queue")
    sub.add_argument("--func", metavar="TEXT", help="only the jobs whose function (module:qualname) contains TEXT")
    sub.add_argument("--limit", metavar="N", type=positive, default=50, help="at most N jobs (default: %(default)s)")
    sub = command("job", "show one job: its record, next fire times and runs")
    job_id(sub)
    sub.add_argument("--runs", metavar="N", type=positive, default=20, help="its latest N runs (default: %(default)s)")
    sub = command("runs", "list the latest runs, of every job or of one")
    sub.add_argument("--job", metavar="ID", dest="job_id", help="only the runs of this job")
    sub.add_argument("--status", choices=RUN_STATUSES)
    sub.add_argument("--queue", metavar="NAME", help="only the runs of this queue")
    sub.add_argument("--limit", metavar="N", type=positive, default=20, help="at most N runs (default: %(default)s)")
    command("daemons", "list the live daemons of each queue, and the holder of its lease")
    sub = command("stats", "count the jobs by queue and status, and the latest runs and their lateness")
    sub.add_argument(
        "--minutes",
        metavar="N",
        type=positive,
        default=15,
        help="the runs of the last N minutes (default: %(default)s)",
    )
    sub = command("dead-letters", "list the messages the daemons refused, with why; or replay or delete one")
    sub.add_argument("action", nargs="?", choices=("list", "replay", "delete"), default="list", help="default: list")
    sub.add_argument("letter_id", metavar="ID", nargs="?", type=positive, help="the dead letter to replay or delete")
    sub.add_argument(
        "--force",
        action="store_true",
        help="replay a message that did not carry a valid signature of scheduler.secret",
    )
    sub.add_argument("--queue", metavar="NAME", help="only the dead letters of this queue")
    sub.add_argument("--limit", metavar="N", type=positive, default=50, help="at most N (default: %(default)s)")
    for name, text in (
        ("cancel", "cancel a job: it runs no more (a run in progress finishes)"),
        ("pause", "pause a job until 'resume'"),
        ("resume", "resume a paused job from its next fire time"),
        ("run", "run a scheduled job now"),
        ("retry", "run a failed or interrupted job again; have a parked job loaded again"),
    ):
        job_id(command(name, text))
    command("purge", "forget the finished jobs older than scheduler.result_ttl (as housekeeping does)")


def check_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, as a usage error, the daemon's options given with a command."""
    if args.command is None:
        return
    daemon = {
        "--queue": args.queues,
        "--reload": args.reload,
        "--processes": args.processes is not None,
        "--restart": args.restart,
        "--message": args.message is not None,
        "--listeners": args.listeners,
    }
    given = [name for name, value in daemon.items() if value]
    if given:
        parser.error(f"{', '.join(given)}: an option of the daemon, not of the command {args.command!r}")
    if args.command == "dead-letters":
        if (args.action != "list") != (args.letter_id is not None):
            parser.error("dead-letters: 'replay' and 'delete' take the ID of a dead letter, and only they do")
        if args.force and args.action != "replay":
            parser.error("dead-letters: --force applies to 'replay' only")


def run_command(args: argparse.Namespace, app_settings: Callable[[], Mapping[str, Any]]) -> int:
    """Carry out the command of *args* with the settings *app_settings*
    returns; the exit code."""
    from pyramid_scheduler.settings import parse_settings
    from pyramid_scheduler.web.proxy import SchedulerProxy

    try:
        settings = parse_settings(app_settings())
    except Exception as exc:  # noqa: BLE001 - a bad INI file, section or setting: one line
        return fail(f"could not read the settings of {args.config_uri}: {getattr(exc, 'evalue', None) or exc}")
    if settings.memory_store:
        return fail("the commands read the job store; scheduler.jobstore.url is 'memory'")
    proxy = SchedulerProxy(settings)
    try:
        return COMMANDS[args.command](proxy, args, Output(args.json))
    except NotFound as exc:
        return fail(str(exc), EXIT_NOT_FOUND)
    except InvalidQueue as exc:
        return fail(f"--queue: {exc}", EXIT_USAGE)
    except InvalidJob as exc:
        return fail(str(exc), EXIT_NOT_FOUND)
    except SchedulerError as exc:
        return fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the job store or the broker: one line, not a traceback
        return fail(f"{type(exc).__name__}: {exc}")
    finally:
        proxy.close()


def fail(text: str, code: int = EXIT_FAILED) -> int:
    print(f"pscheduler: {text}", file=sys.stderr)
    return code
