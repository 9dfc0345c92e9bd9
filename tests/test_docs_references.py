"""Every reference to a document or a file of the repository resolves.

Sphinx checks the references between the pages of docs/ (``-W``), but not
those in the package's own docstrings and comments, README.rst or
CHANGES.rst, which name docs pages (``docs/wire-format.rst``, ``:doc:`settings```)
and files (``tests/integration/sampleapp/tm.py``) as plain text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: ``:doc:`name``` or ``:doc:`title <name>```.
DOC_ROLE = re.compile(r":doc:`(?:[^`<]*<)?([^`>]+)>?`")
#: A path into the repository written out in text: under one of its folders,
#: with a file extension (``docs/settings.rst``, ``pyramid_scheduler/daemon/scheduling.py``).
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|pyramid_scheduler|tests|bench|constraints)/[\w./-]*\.(?:rst|py|ini|txt|json))"
)
#: Paths that name what the reader makes, not what the repository holds.
NOT_IN_REPO = {"docs/_build", "docs/_bench"}


def sources() -> list[Path]:
    files = sorted((ROOT / "pyramid_scheduler").rglob("*.py"))
    files += sorted(DOCS.glob("*.rst")) + [ROOT / "README.rst", ROOT / "CHANGES.rst", ROOT / "dev.py"]
    return files


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_references_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = []
    for name in DOC_ROLE.findall(text):
        target = (DOCS / name.lstrip("/")).with_suffix(".rst")
        if not target.exists():
            missing.append(f":doc:`{name}`")
    for name in REPO_PATH.findall(text):
        if any(name.startswith(prefix) for prefix in NOT_IN_REPO):
            continue
        if not (ROOT / name).exists():
            missing.append(name)
    assert not missing, f"{path.relative_to(ROOT)} refers to what is not there: {missing}"


def test_the_check_finds_a_broken_reference() -> None:
    """The patterns match the forms used in the repository (else the test above passes vacuously)."""
    sample = "See ``docs/wire.rst``, :doc:`settings`, :doc:`the guarantees <guarantees>` and :doc:`nosuch`."
    assert REPO_PATH.findall(sample) == ["docs/wire.rst"]
    assert DOC_ROLE.findall(sample) == ["settings", "guarantees", "nosuch"]
