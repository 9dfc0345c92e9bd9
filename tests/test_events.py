import logging
import threading

import pytest
from pyramid.config import Configurator

from pyramid_scheduler.api import Event, JobExecuted, JobFailed
from pyramid_scheduler.events import EventDispatcher, Listeners


def test_event_is_a_dict_with_attributes_like_034():
    event = Event(Event.JOB_EXECUTED, job_id="j", retval=3)
    assert event.type == "job.executed" and event["job_id"] == "j" and event.retval == 3
    with pytest.raises(AttributeError):
        _ = event.missing
    assert "job.executed" in repr(event)


def test_listener_filters_args_and_failure_isolation(caplog):
    listeners = Listeners()
    seen = []

    def broken(event):
        raise RuntimeError("listener bug")

    def wanted(event, tag, key=None):
        seen.append((event.type, tag, key))

    listeners.add(broken)
    listeners.add(wanted, events=[Event.JOB_EXECUTED], args=["t"], kwargs={"key": 1})
    with caplog.at_level(logging.ERROR):
        listeners.notify(Event(Event.JOB_CREATED, job_id="a"))
        listeners.notify(Event(Event.JOB_EXECUTED, job_id="a"))
    assert seen == [("job.executed", "t", 1)]
    assert "listener bug" in caplog.text
    listeners.remove(wanted)
    listeners.notify(Event(Event.JOB_EXECUTED, job_id="b"))
    assert len(seen) == 1


def test_unknown_event_types_are_refused():
    with pytest.raises(ValueError, match="job.exploded"):
        Listeners().add(print, events=["job.exploded"])
    with pytest.raises(TypeError):
        Listeners().add("not callable")


def test_dispatcher_keeps_order_and_runs_on_its_own_thread():
    listeners = Listeners()
    seen = []
    listeners.add(lambda event: seen.append((event.n, threading.current_thread().name)))
    dispatcher = EventDispatcher(listeners)
    dispatcher.start()
    for n in range(200):
        dispatcher.emit(Event(Event.MESSAGE, n=n))
    dispatcher.stop(timeout=5)
    assert [n for n, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"pscheduler-events"}


def test_slow_listener_does_not_block_emitters():
    listeners = Listeners()
    release = threading.Event()
    listeners.add(lambda event: release.wait(30))
    dispatcher = EventDispatcher(listeners)
    dispatcher.start()
    # The listener holds until released, after the emits: an emit that
    # waited for it would never return while it holds.
    emitter = threading.Thread(target=lambda: [dispatcher.emit(Event(Event.MESSAGE)) for _ in range(100)])
    emitter.start()
    emitter.join(20)
    emitted_while_held = not emitter.is_alive()
    release.set()
    emitter.join()
    dispatcher.stop(timeout=5)
    assert emitted_while_held


def test_events_are_pyramid_events_too():
    config = Configurator()
    executed = config.testing_add_subscriber(JobExecuted)
    failed = config.testing_add_subscriber(JobFailed)
    config.commit()
    dispatcher = EventDispatcher(Listeners(), config.registry)
    dispatcher.deliver(Event(Event.JOB_EXECUTED, job_id="x"))
    dispatcher.deliver(Event(Event.JOB_ERROR, job_id="y"))
    assert [e.job_id for e in executed] == ["x"]
    assert [e.job_id for e in failed] == ["y"]
    assert executed[0].event.type == Event.JOB_EXECUTED
    assert executed[0].registry is config.registry


def test_034_listener_aliases(tmp_path):
    with Configurator(settings={"scheduler.broker.url": f"sqlite:///{tmp_path}/b.sqlite"}) as config:
        config.include("pyramid_scheduler")
    scheduler = config.registry.scheduler
    seen = []
    scheduler.addListener(seen.append, [Event.MESSAGE])
    scheduler.listeners.notify(Event(Event.MESSAGE, message="hi"))
    scheduler.removeListener(seen.append)
    scheduler.listeners.notify(Event(Event.MESSAGE, message="again"))
    assert [e.message for e in seen] == ["hi"]


def test_a_listener_or_subscriber_calling_sys_exit_does_not_end_the_dispatcher(caplog):
    listeners = Listeners()
    seen = []

    def exits(event):
        if event.n == 1:
            raise SystemExit(2)

    listeners.add(exits)
    listeners.add(lambda event: seen.append(event.n))
    with Configurator() as config:
        config.add_subscriber(lambda event: exits(event.event), JobExecuted)
    dispatcher = EventDispatcher(listeners, config.registry)
    dispatcher.start()
    with caplog.at_level(logging.ERROR):
        for n in range(4):
            dispatcher.emit(Event(Event.JOB_EXECUTED, n=n))
        dispatcher.stop(timeout=5)
    assert seen == [0, 1, 2, 3]
    assert "listener" in caplog.text and "subscriber failed" in caplog.text
    assert "SystemExit: 2" in caplog.text
