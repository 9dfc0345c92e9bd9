"""Function references (:mod:`pyramid_scheduler.wire.refs`): what can be named
by ``module:qualname`` and imported back; the attacks on references are in
:mod:`security.test_references`."""

from functools import partial

import pytest

from pyramid_scheduler.exceptions import InvalidJob
from pyramid_scheduler.wire.refs import callable_ref, resolve_ref


def module_level(x):
    return x


class Holder:
    def method(self):
        return 1

    @classmethod
    def klass(cls):
        return 2


def test_module_level_function_round_trips():
    ref = callable_ref(module_level)
    assert ref == "wire.test_refs:module_level"
    assert resolve_ref(ref) is module_level
    assert callable_ref("json:dumps") == "json:dumps"
    assert callable_ref(Holder.klass) == "wire.test_refs:Holder.klass"


@pytest.mark.parametrize(
    "func, why",
    [
        (lambda: 1, "lambda"),
        (Holder().method, "bound method"),
        (partial(module_level, 1), "partial"),
        (42, "not callable"),
        ("json.dumps", "expected 'package.module:function'"),
        ("no_such_module_xyz:f", "cannot be imported"),
        ("json:no_such_attr", "has no attribute"),
    ],
)
def test_unreferencable_callables_are_refused_with_a_reason(func, why):
    with pytest.raises(InvalidJob, match=why):
        callable_ref(func)


def test_nested_function_is_refused():
    def inner():
        return None

    with pytest.raises(InvalidJob, match="nested function"):
        callable_ref(inner)
