"""A pyramid_tm application with a zope.sqlalchemy session, for
transaction-aware enqueue and jobs that take a request.

``pscheduler`` loads it with ``use = call:integration.sampleapp.tm:main``;
tests also build it in-process under WebTest. Beside the sample
application's settings it reads ``tmapp.db``, the SQLAlchemy URL of its own
database (a table ``orders``).

Views (JSON):

* ``/order?tag=T``: inserts an order row and enqueues ``jobs.record(oracle, T)``
  with id ``T``, through ``request.scheduler``; ``&fail=1`` then raises, so
  pyramid_tm aborts; ``&doom=1`` dooms the transaction instead;
  ``&immediate=1`` passes ``immediate=True``.
* ``/cancel?id=T``: cancels job ``T`` (``&fail=1`` raises afterwards).
* ``/report?tag=T``: enqueues :func:`report`, a job that takes a request.
* ``/chain?tag=T&fail=1``: enqueues :func:`chain` (``fail`` optional).
"""

from __future__ import annotations

from typing import Any

import pyramid_tm
import sqlalchemy as sa
import zope.sqlalchemy
from pyramid.config import Configurator
from sqlalchemy.orm import sessionmaker

from . import jobs

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("tag", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(50), nullable=False),
)


def dbsession(request: Any) -> Any:
    """The request's session, joined to ``request.tm`` (the cookiecutter way)."""
    session = request.registry["tmapp.session_factory"]()
    zope.sqlalchemy.register(session, transaction_manager=request.tm)
    return session


def shop_name(request: Any) -> str:
    """A custom request method, to show a job's request has the app's extensions."""
    return f"shop-{request.registry.settings['sampleapp.marker']}"


def add_order(request: Any, tag: str, source: str) -> None:
    request.dbsession.execute(orders.insert().values(tag=tag, source=source))
    zope.sqlalchemy.mark_changed(request.dbsession)


def order_view(request: Any) -> dict[str, Any]:
    tag = request.params["tag"]
    add_order(request, tag, "web")
    options = {"immediate": True} if request.params.get("immediate") else {}
    job_id = request.scheduler.add_async_job(
        jobs.record, args=[request.registry.settings["sampleapp.oracle"], tag], id=tag, **options
    )
    if request.params.get("doom"):
        request.tm.doom()
    if request.params.get("fail"):
        raise RuntimeError(f"order {tag} fails after enqueueing")
    return {"job_id": job_id}


def cancel_view(request: Any) -> dict[str, Any]:
    job_id = request.scheduler.cancel_job(request.params["id"])
    if request.params.get("fail"):
        raise RuntimeError(f"cancel of {job_id} fails after cancel_job")
    return {"job_id": job_id}


def report(request: Any, oracle: str, tag: str) -> dict[str, Any]:
    """A job that takes a request: writes an order through ``request.dbsession``
    (committed by the runner's ``request.tm``) and records what it saw."""
    add_order(request, tag, "job")
    jobs.record(oracle, tag)
    # Runs when the runner closes the request, after the run.
    request.add_finished_callback(lambda request: jobs.record(oracle, f"{tag}-closed"))
    return {"shop": request.shop_name, "tm_active": pyramid_tm.is_tm_active(request), "status": request.tm.get().status}


def chain(request: Any, oracle: str, tag: str, fail: bool) -> str:
    """A job that enqueues a follow-up (``TAG-next``), then fails if *fail*:
    the follow-up is published only if this run's transaction commits."""
    jobs.record(oracle, tag)
    request.scheduler.add_async_job(jobs.record, args=[oracle, f"{tag}-next"], id=f"{tag}-next")
    if fail:
        raise RuntimeError(f"chain {tag} fails after enqueueing its follow-up")
    return tag


def report_view(request: Any) -> dict[str, Any]:
    tag = request.params["tag"]
    job_id = request.scheduler.add_async_job(report, args=[request.registry.settings["sampleapp.oracle"], tag], id=tag)
    return {"job_id": job_id}


def chain_view(request: Any) -> dict[str, Any]:
    tag = request.params["tag"]
    job_id = request.scheduler.add_async_job(
        chain, args=[request.registry.settings["sampleapp.oracle"], tag, bool(request.params.get("fail"))], id=tag
    )
    return {"job_id": job_id}


def order_tags(url: str, source: str | None = None) -> list[str]:
    """The tags in the ``orders`` table of the database at *url*."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(orders.c.tag).order_by(orders.c.tag)
            if source is not None:
                query = query.where(orders.c.source == source)
            return [row[0] for row in conn.execute(query)]
    finally:
        engine.dispose()


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    engine = sa.create_engine(settings["tmapp.db"])
    metadata.create_all(engine)
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_scheduler")
        oracle = settings.get("sampleapp.oracle")
        if oracle:
            config.registry.scheduler.add_listener(jobs.record_event, args=(oracle,))
        config.registry["tmapp.session_factory"] = sessionmaker(bind=engine)
        config.add_request_method(dbsession, "dbsession", reify=True)
        config.add_request_method(shop_name, "shop_name", reify=True)
        for name, view in (
            ("order", order_view),
            ("cancel", cancel_view),
            ("report", report_view),
            ("chain", chain_view),
        ):
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name, renderer="json")
    return config.make_wsgi_app()
