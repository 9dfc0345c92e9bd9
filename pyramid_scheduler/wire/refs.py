"""References: a job function named by ``module:qualname``, and how it takes a request.

On the way in (:meth:`~pyramid_scheduler.web.proxy.SchedulerProxy.add_async_job`
and the others) :func:`callable_ref` turns a function into the reference that
travels in a :class:`~pyramid_scheduler.wire.messages.JobRequest`, refusing
anything the daemon could not import back; at the daemon's door and when a
stored job loads, :func:`check_ref` imports it again under the same rules
(``scheduler.allowed_modules`` checked before anything is imported, and only
what the module itself defines). :func:`check_arguments` matches a request's
arguments with the function's signature, then the function's own check if
it has one (:func:`job_check`), and :func:`with_request` adds the request the
runner builds for a job that takes one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from apscheduler.util import check_callable_args

from pyramid_scheduler.exceptions import InvalidJob


def callable_ref(func: Any, allowed: tuple[str, ...] = ()) -> str:
    """Return ``"module:qualname"`` for a module-level function, or refuse it.

    A string is taken as the reference itself and checked by :func:`check_ref`
    (its module against *allowed*, ``scheduler.allowed_modules``, before it is
    imported).

    :raises InvalidJob: for a lambda, a nested function, a bound method, a
        ``functools.partial``, a function defined in ``__main__``, a module
        outside *allowed* or anything that does not resolve back to the same
        object.
    """
    if isinstance(func, str):
        ref = func.strip()
        check_ref(ref, allowed)
        return ref
    module, qualname = importable_name(func)
    ref = f"{module}:{qualname}"
    check_allowed(ref, allowed)
    try:
        resolved = resolve_ref(ref)
    except InvalidJob as exc:
        raise InvalidJob(f"func: {ref} does not resolve back to the function ({exc})") from exc
    if resolved is not func and resolved != func:
        raise InvalidJob(
            f"func: {ref} resolves to {resolved!r}, not to the function given; "
            "is it decorated or rebound under another name?"
        )
    return ref


def importable_name(func: Any) -> tuple[str, str]:
    """The ``(module, qualname)`` under which the daemon would import *func*,
    without importing it (so it may be asked while the module is still
    being executed, as a decorator does).

    :raises InvalidJob: for a lambda, a nested function, a bound method, a
        ``functools.partial``, something not callable or a function defined
        in ``__main__``.
    """
    if isinstance(func, functools.partial):
        raise InvalidJob(
            "func: a functools.partial cannot be referenced by name; pass the "
            "function and put the bound values in args/kwargs"
        )
    if not callable(func):
        raise InvalidJob(f"func: {func!r} is not callable")
    if inspect.ismethod(func) and not inspect.isclass(func.__self__):
        raise InvalidJob(
            f"func: {func.__qualname__} is a bound method; the daemon cannot "
            "rebuild its instance. Use a module-level function that takes the "
            "instance's data as arguments"
        )
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not qualname or not module:
        raise InvalidJob(f"func: {func!r} has no importable name")
    if "<lambda>" in qualname:
        raise InvalidJob("func: a lambda has no importable name; define a module-level function")
    if "<locals>" in qualname:
        raise InvalidJob(f"func: {qualname} is a nested function; the daemon can only import module-level functions")
    if module == "__main__":
        raise InvalidJob(
            f"func: {qualname} is defined in __main__, which the daemon cannot "
            "import; move it into a module of your package"
        )
    return module, qualname


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import ``"module:qualname"`` and return the callable it names.

    Only what the module itself defines is reachable: a module-level
    function (or class), or a method of a class defined in the module
    (``module:Class.method``). Every step of the qualname must be such a
    class, and the callable's own ``__module__`` and ``__qualname__`` must be
    the reference's, so ``myjobs:os.system`` (an attribute chain through a
    module that ``myjobs`` imports) and ``myjobs:run`` (where ``run =
    os.system``) are refused before anything is called.

    :raises InvalidJob: naming the reference and what is wrong.
    """
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise InvalidJob(f"func {ref!r}: expected 'package.module:function'")
    parts = qualname.split(".")
    if any(not part.isidentifier() or (part.startswith("__") and part.endswith("__")) for part in parts):
        raise InvalidJob(f"func {ref!r}: {qualname!r} is not a plain dotted name of a function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidJob(f"func {ref!r}: module {module_name!r} cannot be imported ({exc})") from exc
    for index, part in enumerate(parts):
        owner = ".".join(parts[:index])
        if index and not (isinstance(obj, type) and _defined_as(obj, module_name, owner)):
            raise InvalidJob(
                f"func {ref!r}: {owner} is not a class defined in {module_name}; a job "
                "function must be named where it is defined"
            )
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidJob(f"func {ref!r}: {module_name} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise InvalidJob(f"func {ref!r} is not callable")
    if not _defined_as(obj, module_name, qualname):
        raise InvalidJob(
            f"func {ref!r}: is {getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', None)}, "
            f"not defined in {module_name} under that name; a job function must be named where it is "
            "defined"
        )
    return obj  # type: ignore[no-any-return]


def _defined_as(obj: Any, module: str, qualname: str) -> bool:
    return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == qualname


def check_allowed(ref: str, allowed: tuple[str, ...]) -> None:
    """Refuse *ref* unless its module is one of *allowed* or below one.

    Checked before importing anything, on both ends.
    """
    if not allowed:
        return
    module = ref.partition(":")[0]
    if not any(module == prefix or module.startswith(prefix + ".") for prefix in allowed):
        raise InvalidJob(f"func {ref!r}: module {module!r} is not in scheduler.allowed_modules")


def check_ref(ref: Any, allowed: tuple[str, ...]) -> Callable[..., Any]:
    """The one rule for a job function's reference, wherever it comes from
    (``add_*_job``, a message at the door, a row of the job store): a
    ``module:qualname`` string whose module is allowed (checked before
    anything is imported) and which names what that module defines
    (:func:`resolve_ref`).

    :returns: the function.
    :raises InvalidJob: naming the reference and what is wrong.
    """
    if not isinstance(ref, str) or ":" not in ref:
        raise InvalidJob(f"func {ref!r:.80}: expected 'package.module:function'")
    check_allowed(ref, allowed)
    return resolve_ref(ref)


def takes_request(func: Callable[..., Any]) -> str | None:
    """How *func* takes the request the runner builds for it: ``"first"`` (its
    first parameter is ``request``), ``"keyword"`` (a later one is), or ``None``.

    Asked several times for every job; the answer is kept per function.
    """
    try:
        return _takes_request(func)
    except TypeError:  # an unhashable callable
        return _takes_request.__wrapped__(func)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4096)
def _takes_request(func: Callable[..., Any]) -> str | None:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    for index, param in enumerate(params):
        if param.name != "request":
            continue
        if index == 0 and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return "first"
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            return "keyword"
    return None


def with_request(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], request: Any, stored: bool = False
) -> tuple[list[Any], dict[str, Any]]:
    """*args* and *kwargs* with *request* where *func* takes one.

    The job store keeps a ``None`` there (APScheduler checks a job's
    arguments against its signature); with *stored*, that placeholder is
    replaced rather than a new argument added.
    """
    how = takes_request(func)
    if how == "first":
        return [request, *args[1:]] if stored else [request, *args], kwargs
    if how == "keyword":
        return args, {**kwargs, "request": request}
    return args, kwargs


def without_request(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """A stored job's arguments as sent: without the request placeholder."""
    how = takes_request(func)
    if how == "first":
        return args[1:], kwargs
    if how == "keyword":
        return args, {k: v for k, v in kwargs.items() if k != "request"}
    return args, kwargs


#: The attribute where :func:`job_check` keeps a job function's own check.
CHECK_ATTRIBUTE = "__pyramid_scheduler_check__"

#: A job function's own check: ``check(args, kwargs, settings)`` raises
#: :class:`~pyramid_scheduler.exceptions.InvalidJob` for a request it refuses.
JobCheck = Callable[[list[Any], dict[str, Any], Any], None]


def job_check(check: JobCheck) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a job function with its own check of a request's arguments,
    made wherever :func:`check_arguments` is (``add_*_job`` and declared jobs
    with the producer's settings, the daemon's door with its own), after the
    signature check. The function is returned as it is (its reference is
    unchanged). :func:`pyramid_scheduler.shell.run` is one.
    """

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, CHECK_ATTRIBUTE, check)
        return func

    return mark


def check_arguments(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], ref: str, settings: Any = None
) -> None:
    """Refuse arguments the function's signature cannot take (its ``request``
    parameter, if any, is the runner's to fill in), then those its own check
    (:func:`job_check`) refuses under *settings*."""
    if "request" in kwargs and takes_request(func):
        raise InvalidJob(
            f"func {ref}: kwargs['request']: the runner passes the job a request of its own; do not send one"
        )
    called = with_request(func, args, kwargs, None)
    try:
        try:
            _check_shape(func, len(called[0]), tuple(called[1]))
        except TypeError:  # an unhashable callable
            check_callable_args(func, *called)
    except ValueError as exc:
        raise InvalidJob(f"func {ref}: {exc}") from exc
    check = getattr(func, CHECK_ATTRIBUTE, None)
    if check is not None:
        check(args, kwargs, settings)


@functools.lru_cache(maxsize=4096)
def _check_shape(func: Callable[..., Any], nargs: int, names: tuple[str, ...]) -> None:
    """APScheduler's argument check, which depends only on how many positional
    arguments and which keyword names are given: kept per shape once passed."""
    check_callable_args(func, [None] * nargs, dict.fromkeys(names))
