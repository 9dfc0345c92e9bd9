"""Service: the one execution path of ``pscheduler`` and of combined mode.

:class:`SchedulerService` joins the daemons of its queues (every one of
them executes), starts the engine (:mod:`.engine`), consumes
(:mod:`.consumer`) until asked to stop, then stops the engine. Only the
thread that calls :meth:`SchedulerService.run` differs: ``pscheduler``'s
main thread, or in combined mode a thread of the web process started by
:func:`start_combined`, an ``ApplicationCreated`` subscriber.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.brokers.connection import make_connection
from pyramid_scheduler.brokers.fanout import EventPublisher, origin_of
from pyramid_scheduler.daemon.consumer import JobConsumer, Stopping
from pyramid_scheduler.daemon.engine import Engine
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.web.proxy import SchedulerProxy

log = get_logger(__name__)

#: The exit code of a daemon whose heartbeat lapsed, so that the others took
#: its work over (``pscheduler`` exits with it; its supervisor starts it again).
EXIT_LEASE_LOST = 3


class SchedulerService:
    """Lease, engine and consumer for the queues one process runs."""

    def __init__(self, proxy: SchedulerProxy, queues: tuple[str, ...] | None = None) -> None:
        self.proxy = proxy
        self.engine = Engine(proxy, queues)
        settings = self.engine.settings
        self.events_out: EventPublisher | None = None
        if settings.publishes_events:
            self.events_out = EventPublisher(settings, self.engine.ledger, origin_of(proxy))
            self.engine.dispatcher.forward = self.events_out
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self._thread: threading.Thread | None = None
        #: The server of ``scheduler.metrics.listen`` (:meth:`serve_metrics`).
        self.metrics: Any = None

    def serve_metrics(self, place: str = "") -> None:
        """Serve this daemon's ``/metrics`` and ``/health`` on
        ``scheduler.metrics.listen`` (nothing when it is empty) until :meth:`run` ends.

        :raises pyramid.exceptions.ConfigurationError: naming the setting:
            ``prometheus_client`` is not installed, or the address is in use.
        """
        listen = self.engine.settings.metrics_listen
        if not listen:
            return
        try:
            from pyramid_scheduler.metrics.listen import serve_daemon
        except ImportError as exc:
            raise ConfigurationError(
                f"scheduler.metrics.listen = {listen}: needs prometheus_client ({exc}); "
                'pip install "pyramid_scheduler[metrics]"'
            ) from None
        self.metrics = serve_daemon(self.engine, listen, place)

    def run(self) -> int:
        """Run until :meth:`stop`; returns an exit code (:data:`EXIT_LEASE_LOST`
        if this daemon's heartbeat lapsed and the others took its work over)."""
        engine = self.engine
        if not self._join():
            if self.metrics is not None:
                self.metrics.stop()
            return 0
        engine.start()
        self.proxy.runtime = self
        self.started.set()
        connection = make_connection(engine.settings, consumer=True, consumer_name=engine.owner)
        try:
            JobConsumer(engine, connection, self.stop_event).run()
        except Stopping:
            pass
        finally:
            connection.release()
            self.proxy.runtime = None
            engine.stop()
            if self.metrics is not None:
                self.metrics.stop()
            if self.events_out is not None:
                self.events_out.close()
        return EXIT_LEASE_LOST if engine.lease_lost.is_set() else 0

    def _join(self) -> bool:
        """Join the daemons of the queues, waiting while the job store is unavailable."""
        poll = max(0.5, self.engine.settings.lease_ttl / 3)
        announced = False
        while not self.stop_event.is_set():
            try:
                self.engine.join()
                return True
            except sa.exc.SQLAlchemyError as exc:
                if not announced:
                    log.warning("job store unavailable at start (%s); retrying every %gs", exc, poll)
                    announced = True
            self.stop_event.wait(poll)
        return False

    def stop(self) -> None:
        """Ask :meth:`run` to finish: stop consuming, then stop the engine."""
        self.stop_event.set()

    def start_thread(self) -> threading.Thread:
        """Run in a background thread (combined mode)."""
        self._thread = threading.Thread(target=self.run, name="pscheduler-combined", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


_combined_suppressed = threading.local()


@contextmanager
def combined_suppressed() -> Iterator[None]:
    """Build applications in this block without starting their combined-mode
    scheduler (``pscheduler`` loads the application only to refuse it)."""
    _combined_suppressed.on = True
    try:
        yield
    finally:
        _combined_suppressed.on = False


def start_combined(event: Any) -> None:
    """``ApplicationCreated`` subscriber: run the jobs in this web process.

    Several web workers may each start one: each of them runs jobs, as
    several daemons do.
    """
    if getattr(_combined_suppressed, "on", False):
        return
    proxy = event.app.registry.scheduler
    if proxy.runtime is not None or getattr(proxy, "_service", None) is not None:
        return
    service = SchedulerService(proxy)
    proxy._service = service
    atexit.register(_stop_service, service)
    service.start_thread()
    log.info("combined mode: running queues %s in this process", ", ".join(service.engine.queues))


def _stop_service(service: SchedulerService) -> None:
    service.stop()
    service.join(service.engine.settings.shutdown_timeout + 10)
