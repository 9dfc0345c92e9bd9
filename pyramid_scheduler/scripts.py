"""``pscheduler CONFIG-URI [COMMAND]``: the daemon that runs the jobs, and the commands.

With a COMMAND (``jobs``, ``cancel ID``, ...), it carries it out and exits
(:mod:`pyramid_scheduler.commands`); without one, it is the daemon:
it loads the application from the INI file (logging configured from it),
checks that the application includes pyramid_scheduler and is not in combined
mode, then runs a :class:`~.service.SchedulerService` in the main thread: it
stands by while another daemon holds the queues' lease, then consumes and
runs jobs. SIGTERM or SIGINT stops consuming, lets running jobs finish (up to
``scheduler.shutdown_timeout``), shuts APScheduler down and exits 0.

With ``--processes N`` (or ``scheduler.processes``) above 1, or with
``--restart``, it loads nothing of the application: it reads those two
settings and runs N such daemons as child processes under a
:class:`~.processes.Supervisor`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

import hupper
from pyramid.exceptions import ConfigurationError
from pyramid.paster import bootstrap, get_appsettings, setup_logging

from pyramid_scheduler.commands import add_commands, check_command, positive, run_command
from pyramid_scheduler.daemon.engine import unshared_store
from pyramid_scheduler.daemon.processes import STOP_GRACE, WATCH_ENV, ModuleReport, Place, Supervisor
from pyramid_scheduler.daemon.service import EXIT_LEASE_LOST as EXIT_LEASE_LOST  # the service's: 3
from pyramid_scheduler.daemon.service import SchedulerService, combined_suppressed
from pyramid_scheduler.exceptions import InvalidQueue, SchedulerError, SchemaError
from pyramid_scheduler.logs import get_logger, label_process
from pyramid_scheduler.settings import SchedulerSettings, parse_only

log = get_logger("pyramid_scheduler.pscheduler")

#: Exit codes, beside 0 (stopped on request) and 2 (bad command line).
EXIT_NO_SCHEDULER = 10
EXIT_COMBINED = 11
EXIT_BAD_QUEUE = 12
#: The settings would run jobs from a broker other machines reach, unprotected.
EXIT_INSECURE = 13
#: The application has ``scheduler.enabled = false``.
EXIT_DISABLED = 14
EXIT_STARTUP_FAILED = 20
#: A supervised daemon exiting with one of these stops all (with N > 1, also
#: EXIT_STARTUP_FAILED): restarting it would fail again.
EXIT_NOT_RESTARTED = (2, EXIT_NO_SCHEDULER, EXIT_COMBINED, EXIT_BAD_QUEUE, EXIT_INSECURE, EXIT_DISABLED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pscheduler",
        description="Run the pyramid_scheduler jobs of a Pyramid application "
        "(for applications with scheduler.combined = false).",
    )
    parser.add_argument("config_uri", metavar="CONFIG-URI", help="the configuration file or URI, e.g. production.ini")
    parser.add_argument(
        "--app-name",
        metavar="NAME",
        default=None,
        help="the application section to load (default: the URI's #name, else main)",
    )
    parser.add_argument(
        "-q",
        "--queue",
        metavar="NAME",
        dest="queues",
        action="append",
        default=[],
        help="run only this queue (repeat for several; default: all of scheduler.queues)",
    )
    parser.add_argument(
        "--reload", action="store_true", help="restart when Python or configuration files change (development)"
    )
    parser.add_argument(
        "--reload-interval",
        metavar="SECONDS",
        type=float,
        default=1,
        help="seconds between file checks with --reload (default: %(default)s)",
    )
    parser.add_argument(
        "--processes",
        metavar="N",
        type=positive,
        default=None,
        help="run N daemon processes under a supervisor that restarts one that dies "
        "(default: scheduler.processes, else 1)",
    )
    parser.add_argument("--restart", action="store_true", help="restart the daemon when it exits unexpectedly")
    parser.add_argument(
        "--restart-interval",
        metavar="SECONDS",
        type=float,
        default=5,
        help="seconds to wait before such a restart, doubled for each crash soon after a start (default: %(default)s)",
    )
    parser.add_argument(
        "--message",
        metavar="TEXT",
        help="send a command to the running daemons of the queues (all, or those "
        "given with -q) and exit: 'print-jobs' logs their jobs, "
        "'restore-parked' retries parked jobs; listeners get a MESSAGE event",
    )
    parser.add_argument(
        "--listeners",
        action="store_true",
        help="with --message: TEXT is not one of the daemon's commands but a message for your own MESSAGE listeners",
    )
    add_commands(parser)
    return parser


#: The ``--message`` texts the daemon acts on (see :meth:`.Management.message`).
DAEMON_COMMANDS = ("print-jobs", "restore-parked")


def check_config_file(parser: argparse.ArgumentParser, config_uri: str) -> None:
    """Exit with a one-line error (2) when CONFIG-URI names a file that is
    not there or cannot be read; other plaster URIs are left to plaster."""
    path = config_uri.partition("#")[0]
    if "://" in path or path.startswith("egg:"):
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        parser.error(f"CONFIG-URI {path}: {exc.strerror or exc}")


#: Seconds ``--reload`` lets the old daemon stop (SIGTERM) before killing it.
RELOAD_SHUTDOWN_INTERVAL = 10.0


def app_uri(config_uri: str, app_name: str | None) -> str:
    """``production.ini#name``: ``--app-name`` replaces a ``#name`` already
    in the URI, and ``main`` is used when neither gives one."""
    path, _, fragment = config_uri.partition("#")
    return f"{path}#{app_name or fragment or 'main'}"


class PSchedulerCommand:
    """The ``pscheduler`` command; :attr:`bootstrap` may be swapped by tests."""

    bootstrap = staticmethod(bootstrap)
    setup_logging = staticmethod(setup_logging)
    get_appsettings = staticmethod(get_appsettings)

    def __init__(self, argv: list[str]) -> None:
        parser = build_parser()
        self.args = args = parser.parse_args(argv[1:])
        if args.listeners and args.message is None:
            parser.error("--listeners goes with --message")
        if args.processes is not None and args.message is not None:
            parser.error("--processes does not go with --message")
        if args.message is not None and not args.listeners and args.message not in DAEMON_COMMANDS:
            parser.error(
                f"--message: unknown command {args.message!r}; expected one of "
                f"{', '.join(DAEMON_COMMANDS)} (add --listeners to send other text to your "
                "MESSAGE listeners)"
            )
        check_command(parser, args)
        check_config_file(parser, args.config_uri)
        self.service: SchedulerService | None = None

    def run(self) -> int:
        args = self.args
        if args.command is not None:
            return run_command(args, lambda: self.get_appsettings(app_uri(args.config_uri, args.app_name)))
        if args.reload and not hupper.is_active():
            hupper.start_reloader(
                "pyramid_scheduler.scripts.main",
                reload_interval=args.reload_interval,
                shutdown_interval=RELOAD_SHUTDOWN_INTERVAL,
            )
            return 0  # not reached: the reloader exits the process
        place = Place.from_env()
        label_process(str(place) if place else "1/1")
        self.setup_logging(args.config_uri)
        if hupper.is_active():
            hupper.get_reloader().watch_files([os.path.abspath(args.config_uri.split("#")[0])])
        if place is None and args.message is None:
            try:
                settings = self.supervision_settings()
            except ConfigurationError as exc:
                log.error("%s", exc)
                return EXIT_STARTUP_FAILED
            processes = args.processes or settings.processes
            if processes > 1 or args.restart:
                label_process("supervisor")
                return self.supervise(processes, settings.shutdown_timeout)
        return self.load_and_serve(place)

    def load_and_serve(self, place: Place | None) -> int:
        """Load the application and :meth:`serve` (in a supervised child:
        say which one it is, and follow the supervisor)."""
        args = self.args
        report = None
        if place is not None:
            if not place.follow_supervisor():
                log.info("the supervisor (pid %d) is gone; not starting", place.supervisor)
                return 0
            log.info(
                "pscheduler process %d of %d (pid %d; supervisor pid %d) starting",
                place.index,
                place.count,
                os.getpid(),
                place.supervisor,
            )
            if os.environ.get(WATCH_ENV):
                report = ModuleReport(os.environ[WATCH_ENV])
                report.start()
        try:
            with combined_suppressed():
                env = self.bootstrap(app_uri(args.config_uri, args.app_name))
        except Exception as exc:  # noqa: BLE001 - load_failed logs it, with its traceback if unexpected
            if report is not None:
                report.failed(exc)  # so that hupper restarts once the file is fixed
            return self.load_failed(exc)
        try:
            return self.serve(env)
        finally:
            env["closer"]()

    def load_failed(self, exc: Exception) -> int:
        """Log why the application did not load; :data:`EXIT_STARTUP_FAILED`."""
        uri = self.args.config_uri
        if isinstance(exc, ConfigurationError):
            # A bad setting says what is wrong in one line; a traceback would bury it.
            cause = getattr(exc, "evalue", None) or exc  # ConfigurationExecutionError wraps it
            log.error("could not load the application from %s: %s", uri, cause)
        elif isinstance(exc, LookupError):  # PasteDeploy: no such section, entry point or egg
            log.error("could not load the application from %s: %s", uri, exc)
        else:
            log.error("could not load the application from %s", uri, exc_info=exc)
        return EXIT_STARTUP_FAILED

    def serve(self, env: dict[str, Any]) -> int:
        args = self.args
        scheduler = getattr(env["registry"], "scheduler", None)
        if scheduler is None:
            log.error(
                "the application did not include pyramid_scheduler; add "
                "'pyramid.includes = pyramid_scheduler' or config.include('pyramid_scheduler')"
            )
            return EXIT_NO_SCHEDULER
        try:
            for queue in args.queues:
                if queue not in scheduler.queues:
                    raise InvalidQueue(queue, scheduler.queues)
        except InvalidQueue as exc:
            log.error("-q/--queue: %s", exc)
            return EXIT_BAD_QUEUE
        if args.message is not None:
            return self.send_message(scheduler, args.message, args.queues or list(scheduler.queues))
        if not scheduler.settings.enabled:
            log.error(
                "the application is configured with scheduler.enabled = false: nothing is sent to "
                "the daemons (tasks run in the web process); set it to true to run jobs in pscheduler"
            )
            return EXIT_DISABLED
        if scheduler.settings.combined:
            log.error(
                "the application is configured with scheduler.combined = true, so its web "
                "processes run the jobs; set it to false to run them in pscheduler"
            )
            return EXIT_COMBINED
        unshared = unshared_store(scheduler.settings, os.environ.get("PSCHEDULER_PROCESS", ""))
        if unshared:
            log.error("refusing to run jobs: %s", unshared)
            return EXIT_STARTUP_FAILED
        try:
            self.service = service = SchedulerService(scheduler, tuple(args.queues) or None)
        except SchemaError as exc:
            log.error("%s", exc)
            scheduler.close()
            return EXIT_STARTUP_FAILED
        except ConfigurationError as exc:  # the default posture (docs/security.rst)
            log.error("%s", exc)
            scheduler.close()
            return EXIT_INSECURE
        try:
            service.serve_metrics(os.environ.get("PSCHEDULER_PROCESS", ""))
        except ConfigurationError as exc:
            log.error("%s", exc)
            scheduler.close()
            return EXIT_STARTUP_FAILED
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = service.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            scheduler.close()
        left = service.engine.running_count()
        if left:
            # Job threads cannot be stopped, and the interpreter would wait for
            # them at exit: scheduler.shutdown_timeout is the bound, so leave now.
            log.warning("pscheduler stopped with %d run(s) cut short; the next daemon reports them interrupted", left)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if code == 0:
            log.info("pscheduler stopped")
        return code

    @staticmethod
    def send_message(scheduler: Any, text: str, queues: list[str]) -> int:
        """``--message``: publish *text* on each of *queues*, then exit."""
        try:
            for queue in queues:
                scheduler.send_message(text, queue=queue, immediate=True)
        except SchedulerError as exc:
            log.error("--message: %s", exc)
            return EXIT_STARTUP_FAILED
        finally:
            scheduler.close()
        log.info("message %r sent to queues %s", text, ", ".join(queues))
        return 0

    def _on_signal(self, signo: int, frame: Any) -> None:
        # Only set a flag: logging and shutdown happen in the main loop.
        if self.service is not None:
            self.service.stop()

    def supervision_settings(self) -> SchedulerSettings:
        """``scheduler.processes`` and ``scheduler.shutdown_timeout`` from the
        application's section, without loading the application.

        :raises pyramid.exceptions.ConfigurationError: a bad value of one of them.
        """
        args = self.args
        try:
            raw = self.get_appsettings(app_uri(args.config_uri, args.app_name))
        except Exception as exc:  # noqa: BLE001 - loading the application reports it in full
            log.debug("could not read the settings of %s: %s", args.config_uri, exc)
            return SchedulerSettings()
        return parse_only(raw, ("processes", "shutdown_timeout"))

    def supervise(self, processes: int, shutdown_timeout: float) -> int:
        """Run *processes* daemons under a :class:`~.processes.Supervisor`."""
        args = self.args
        argv = [args.config_uri]
        if args.app_name:
            argv += ["--app-name", args.app_name]
        for queue in args.queues:
            argv += ["--queue", queue]
        stop_timeout = shutdown_timeout + STOP_GRACE
        if hupper.is_active():  # stop before hupper kills this process
            stop_timeout = min(stop_timeout, RELOAD_SHUTDOWN_INTERVAL - 1)
        fatal = EXIT_NOT_RESTARTED if processes == 1 else (*EXIT_NOT_RESTARTED, EXIT_STARTUP_FAILED)
        supervisor = Supervisor(
            argv,
            processes,
            restart_interval=args.restart_interval,
            stop_timeout=stop_timeout,
            fatal_codes=fatal,
        )
        return supervisor.run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pscheduler`` console script."""
    return PSchedulerCommand(sys.argv if argv is None else argv).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
