"""``scheduler.metrics.listen``: each ``pscheduler`` daemon serves its own series.

:func:`serve_daemon` binds ``HOST:PORT`` (plus the process index minus one
under ``pscheduler --processes N``: ``PSCHEDULER_PROCESS=i/N``) and serves,
from a daemon thread, ``/metrics`` (this daemon's counters and histograms:
its runs by outcome, their duration and lateness) and ``/health`` (200 while
this daemon's heartbeat is valid, else 503). A port in use is refused with an
error naming the setting. :meth:`DaemonServer.stop` closes it when the daemon
stops. Requests are served one at a time (a scraper and a probe), each
bounded by a socket timeout.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import BaseServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pyramid.exceptions import ConfigurationError

from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.metrics.families import REGISTRY, watch_runs

log = get_logger(__name__)

#: Seconds a client may take to send its request or read the answer.
REQUEST_TIMEOUT = 5.0


def listen_address(listen: str, place: str = "") -> tuple[str, int]:
    """``(host, port)`` of ``scheduler.metrics.listen`` for the process at
    *place* (``"i/N"``: port + i - 1; ``""``: the port itself).

    :raises pyramid.exceptions.ConfigurationError: the port is out of range.
    """
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    index = int(place.partition("/")[0]) if place else 1
    port = int(port_text) + index - 1
    if not 0 < port < 65536:
        raise ConfigurationError(
            f"scheduler.metrics.listen: {listen!r} gives process {place or '1/1'} port {port}, "
            "outside 1-65535; choose a lower port"
        )
    return host, port


class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("metrics.listen: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread a request, so that a slow client does not hold up the
    probes behind it (each request is bounded by ``REQUEST_TIMEOUT`` per read)."""

    daemon_threads = True


class _Server6(_Server):
    """For an IPv6 address (``[::1]:9108``)."""

    address_family = socket.AF_INET6


def daemon_app(healthy: Callable[[], bool], queues: Iterable[str], owner: str) -> Callable[..., Any]:
    """The WSGI application of one daemon's ``/metrics`` and ``/health``."""
    queues = list(queues)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])
            return [generate_latest(REGISTRY)]
        if path == "/health":
            ok = healthy()
            body = {"status": "ok" if ok else "unavailable", "daemon": owner, "queues": queues, "heartbeat": ok}
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [json.dumps(body).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics and /health only\n"]

    return app


class DaemonServer:
    """The running server of :func:`serve_daemon`."""

    def __init__(self, server: BaseServer, address: tuple[str, int]) -> None:
        self.server = server
        self.address = address
        self.thread = threading.Thread(target=server.serve_forever, name="pscheduler-metrics", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(REQUEST_TIMEOUT + 1)


def serve_daemon(engine: Any, listen: str, place: str) -> DaemonServer:
    """Count *engine*'s runs and serve them on *listen* (see the module).

    :raises pyramid.exceptions.ConfigurationError: naming
        ``scheduler.metrics.listen`` when the address cannot be bound.
    """
    watch_runs(engine.dispatcher.listeners)
    address = listen_address(listen, place)
    app = daemon_app(engine.lease_valid, engine.queues, engine.owner)
    try:
        server_class = _Server6 if ":" in address[0] else _Server
        server = make_server(address[0], address[1], app, server_class=server_class, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigurationError(
            f"scheduler.metrics.listen: cannot serve the metrics of process {place or '1/1'} on "
            f"{address[0]}:{address[1]}: {exc.strerror or exc} (another program, or another "
            "pscheduler, listens there; with --processes N each process takes the next port)"
        ) from None
    log.info("serving /metrics and /health on http://%s:%d", *address)
    return DaemonServer(server, address)
