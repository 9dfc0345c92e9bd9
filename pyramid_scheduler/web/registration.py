"""Registration: what ``config.include("pyramid_scheduler")`` defers to the commit.

The first step of the data flow. The include registers one deferred action
(:func:`register_scheduler`), as Pyramid's own directives do: when the
configuration is committed (``config.commit()``, ``make_wsgi_app()``, the
end of ``with Configurator() as config:``), the action parses the
``scheduler.*`` settings as they are then (:mod:`pyramid_scheduler.settings`),
so settings changed after the include count, and sets
``registry.scheduler``, a :class:`~pyramid_scheduler.web.proxy.SchedulerProxy`
registered as the :class:`~pyramid_scheduler.api.IScheduler` utility, with an
introspectable (category ``scheduler``) that ``pshell``'s
``registry.introspector`` and pyramid_debugtoolbar show. Between the include
and the commit ``registry.scheduler`` is a :class:`PendingScheduler` that
takes listeners.

:func:`start_in_process` is the ``ApplicationCreated`` subscriber that runs
the jobs in the web process (combined mode) or receives the daemons' job
events (``scheduler.events.subscribe``); it imports the daemon side only in
combined mode, so a web process never loads it.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import PHASE1_CONFIG, Configurator
from pyramid.events import ApplicationCreated

from pyramid_scheduler.api import IScheduler
from pyramid_scheduler.events import Listener, Listeners
from pyramid_scheduler.logs import get_logger
from pyramid_scheduler.settings import mask_url, parse_settings
from pyramid_scheduler.web.proxy import SchedulerProxy

log = get_logger(__name__)

#: The introspection category of the scheduler (its discriminator: IScheduler).
CATEGORY = "scheduler"


class PendingScheduler:
    """``registry.scheduler`` from the include to the commit.

    The scheduler is made when the configuration is committed, from the
    settings as they are then. Before that, listeners may already be added
    (``config.registry.scheduler.add_listener(...)`` right after the
    include, as in 0.3.4); the scheduler gets them. Anything else needs the
    scheduler: before the commit it raises AttributeError saying so; after
    it, a reference taken before the commit stands for the scheduler.
    """

    def __init__(self, registry: Any) -> None:
        self.listeners = Listeners()
        self._registry = registry

    def add_listener(
        self, listener: Listener, events: Any = None, args: Any = None, kwargs: dict[str, Any] | None = None
    ) -> None:
        """Add a listener for the scheduler made at commit (see
        :meth:`SchedulerProxy.add_listener`)."""
        self.listeners.add(listener, events, args, kwargs)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners.remove(listener)

    addListener = add_listener  # noqa: N815 - the 0.3.4 name
    removeListener = remove_listener  # noqa: N815 - the 0.3.4 name

    def __getattr__(self, name: str) -> Any:
        made = getattr(self.__dict__.get("_registry"), "scheduler", self)
        if made is not self:
            return getattr(made, name)
        raise AttributeError(
            f"registry.scheduler.{name}: the scheduler is made when the configuration is committed "
            "(config.commit(), config.make_wsgi_app() or the end of 'with Configurator() as config:'); "
            "until then only add_listener and remove_listener are available"
        )


def register_scheduler(config: Configurator) -> None:
    """Register the deferred action that makes the scheduler (at
    ``PHASE1_CONFIG``, before the declared jobs that use it)."""
    registry = config.registry
    if getattr(registry, "scheduler", None) is None:
        registry.scheduler = PendingScheduler(registry)
    intr = config.introspectable(CATEGORY, IScheduler, "pyramid_scheduler", "scheduler")

    def register() -> None:
        raw = config.get_settings()
        settings = parse_settings(raw)
        if "scheduler.combined" not in raw:
            log.info(
                "scheduler.combined is not set: jobs run in pscheduler, not in this process (0.3.4 defaulted to true)"
            )
        scheduler = SchedulerProxy(settings, registry)
        pending = registry.scheduler
        if isinstance(pending, PendingScheduler):
            scheduler.listeners = pending.listeners
        registry.scheduler = scheduler
        registry.registerUtility(scheduler, IScheduler)
        intr["id"] = settings.id
        intr["queues"] = settings.queues
        intr["combined"] = settings.combined
        intr["broker"] = settings.broker.masked()
        intr["jobstore"] = "memory" if settings.jobstore_url is None else mask_url(settings.jobstore_url)
        intr["transactional"] = settings.transactional
        intr["events_subscribe"] = settings.events_subscribe

    config.action(IScheduler, register, order=PHASE1_CONFIG, introspectables=(intr,))


def request_scheduler(request: Any) -> SchedulerProxy:
    """``request.scheduler``: the application's scheduler."""
    return request.registry.scheduler  # type: ignore[no-any-return]


def start_in_process(event: ApplicationCreated) -> None:
    """``ApplicationCreated`` subscriber: with ``scheduler.combined``, run the
    jobs in this process; with ``scheduler.events.subscribe``, receive the
    daemons' job events. The daemon side is imported here, and only in
    combined mode."""
    settings = getattr(getattr(event.app.registry, "scheduler", None), "settings", None)
    if settings is None:  # the application put a stand-in of its own at registry.scheduler
        return
    if settings.combined and not settings.enabled:
        log.warning("scheduler.enabled = false: combined mode starts no scheduler in this process")
    elif settings.combined:
        from pyramid_scheduler.daemon.service import start_combined

        start_combined(event)
    if settings.events_subscribe:
        from pyramid_scheduler.brokers.fanout import start_subscriber

        start_subscriber(event)
