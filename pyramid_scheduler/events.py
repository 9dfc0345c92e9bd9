"""Events: listeners, and the dispatcher thread that calls them in order.

The engine hands every job event to :meth:`EventDispatcher.emit` from
whichever thread made it (consumer, scheduler or a job's worker); one
dispatcher thread then calls the matching listeners and ``registry.notify``
with the Pyramid event, in the order the events were emitted. A listener that
raises (even ``SystemExit``) is logged and the others still run; a slow
listener delays only other listeners, never the scheduling or running of jobs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pyramid_scheduler.api import PYRAMID_EVENTS, Event
from pyramid_scheduler.logs import get_logger

log = get_logger(__name__)

Listener = Callable[..., Any]


class Listeners:
    """The listeners added with ``add_listener``; safe to change while in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: tuple[tuple[Listener, frozenset[str] | None, tuple[Any, ...], dict[str, Any]], ...] = ()

    def add(
        self,
        listener: Listener,
        events: Iterable[str] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not callable(listener):
            raise TypeError(f"listener {listener!r} is not callable")
        wanted = None
        if events is not None:
            if isinstance(events, str):
                events = [events]
            wanted = frozenset(events)
            unknown = wanted - Event.TYPES
            if unknown:
                raise ValueError(f"unknown event types {sorted(unknown)}; use pyramid_scheduler.api.Event constants")
        with self._lock:
            self._items = (*self._items, (listener, wanted, tuple(args or ()), dict(kwargs or {})))

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self._items = tuple(item for item in self._items if item[0] != listener)

    def notify(self, event: Event) -> None:
        for listener, wanted, args, kwargs in self._items:
            if wanted is not None and event.type not in wanted:
                continue
            try:
                listener(event, *args, **kwargs)
            except BaseException:  # noqa: BLE001 - a listener's sys.exit() must not end the dispatcher
                log.exception("listener %r failed on %r", listener, event)


class EventDispatcher:
    """Delivers events on its own thread, in emission order."""

    def __init__(self, listeners: Listeners, registry: Any = None) -> None:
        self.listeners = listeners
        self.registry = registry
        #: Called with each event before the local listeners and subscribers
        #: (the fan-out to other processes, :mod:`pyramid_scheduler.brokers.fanout`,
        #: which also numbers it: local listeners see ``seq`` too).
        self.forward: Callable[[Event], None] | None = None
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pscheduler-events", daemon=True)
                self._thread.start()

    def emit(self, event: Event) -> None:
        self._queue.put(event)

    def stop(self, timeout: float | None = None) -> None:
        """Deliver what was emitted so far, then stop (waits up to *timeout*)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self.deliver(event)

    def deliver(self, event: Event) -> None:
        if self.forward is not None:
            try:
                self.forward(event)
            except Exception:
                log.exception("forwarding %r to other processes failed", event)
        self.listeners.notify(event)
        if self.registry is not None:
            try:
                self.registry.notify(PYRAMID_EVENTS[event.type](event, self.registry))
            except BaseException:  # noqa: BLE001 - nor a subscriber's
                log.exception("subscriber failed on %r", event)
