"""A job reference names only what its module defines (issue 16, item 2).

With ``scheduler.allowed_modules = security.refjobs`` (a module that imports
``os``, ``subprocess`` and ``logging``), ``security.refjobs:os.system`` and
the like used to pass the module check and then follow the attributes to a
shell. Now a reference resolves only to a function (or a method of a class)
whose ``__module__`` and ``__qualname__`` are the reference's: refused by
``add_*_job``, and refused at the daemon's door even when signed.
"""

from __future__ import annotations

import sys

import pytest
from test_security import SECRET, dead_letters, publish_raw, request_body, running  # noqa: F401

from conftest import wait_for
from pyramid_scheduler import InvalidJob
from pyramid_scheduler.brokers.connection import make_queue
from pyramid_scheduler.wire.refs import callable_ref, check_ref, resolve_ref
from pyramid_scheduler.wire.signing import SIGNATURE_HEADER, sign_message
from security import refjobs

MODULE = "security.refjobs"

#: (reference, what the refusal says)
BYPASSES = [
    (f"{MODULE}:os.system", "os is not a class defined in security.refjobs"),
    (f"{MODULE}:subprocess.getoutput", "subprocess is not a class defined"),
    (f"{MODULE}:logging.os.system", "logging is not a class defined"),
    (f"{MODULE}:run", "is posix:system, not defined in security.refjobs"),
    (f"{MODULE}:Tasks.shell", "not defined in security.refjobs under that name"),
    (f"{MODULE}:Tasks.__class__", "not a plain dotted name"),
    (f"{MODULE}:Tasks.klass.__func__", "not a plain dotted name"),
    (f"{MODULE}:harmless.__globals__", "not a plain dotted name"),
    (f"{MODULE}:os.path.join", "os is not a class defined"),
]


@pytest.mark.parametrize(("ref", "why"), BYPASSES)
def test_attribute_chains_and_borrowed_names_are_refused(ref, why):
    with pytest.raises(InvalidJob, match=why.replace(".", r"\.")):
        check_ref(ref, (MODULE,))


@pytest.mark.parametrize(
    "func",
    [
        refjobs.harmless,
        refjobs.Tasks.klass,
        refjobs.Tasks.static,
        f"{MODULE}:harmless",
        f"{MODULE}:Tasks.klass",
        f"{MODULE}:Tasks.static",
    ],
)
def test_functions_and_methods_defined_in_the_module_still_work(func):
    ref = callable_ref(func, (MODULE,))
    assert ref.startswith(f"{MODULE}:")
    if callable(func):
        assert resolve_ref(ref) == func


def test_the_module_check_comes_before_any_import():
    with pytest.raises(InvalidJob, match="not in scheduler.allowed_modules"):
        callable_ref("antigravity:fly", (MODULE,))
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize(("ref", "why"), BYPASSES[:5])
def test_add_job_refuses_the_bypasses(running, ref, why, tmp_path):  # noqa: F811
    proxy, _ = running(allowed_modules=MODULE, secret=SECRET)
    marker = tmp_path / "pwned"
    with pytest.raises(InvalidJob, match="func"):
        proxy.add_async_job(ref, args=[f"touch {marker}"])
    proxy.add_async_job(f"{MODULE}:Tasks.klass", args=["fine"])
    wait_for(lambda: "klass:fine" in refjobs.RAN)
    assert not marker.exists()


def test_signed_bypasses_are_refused_at_the_door(running, tmp_path):  # noqa: F811
    proxy, service = running(allowed_modules=MODULE, secret=SECRET)
    key = make_queue(proxy.settings, "jobs").routing_key
    markers = []
    for index, (ref, _) in enumerate(BYPASSES[:5]):
        marker = tmp_path / f"pwned-{index}"
        markers.append(marker)
        body = request_body(func=ref, job_id=f"bypass-{index}").replace(
            f'"args":["bypass-{index}"]'.encode(), f'"args":["touch {marker}"]'.encode()
        )
        publish_raw(proxy, body, {SIGNATURE_HEADER: sign_message(body, SECRET.encode(), key)})
    body = request_body(func=f"{MODULE}:Tasks.static", job_id="legit")
    publish_raw(proxy, body, {SIGNATURE_HEADER: sign_message(body, SECRET.encode(), key)})
    wait_for(lambda: "static:legit" in refjobs.RAN and len(dead_letters(service)) == 5)
    reasons = " | ".join(dead_letters(service))
    for ref, why in BYPASSES[:5]:
        assert ref in reasons and why in reasons
    assert [marker for marker in markers if marker.exists()] == []
