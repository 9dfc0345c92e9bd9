"""Sphinx configuration for the pyramid_scheduler documentation.

Build with warnings as errors (as CI does)::

    python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

# Document the checkout this file belongs to, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "pyramid_scheduler"
author = "pyramid_scheduler contributors"
copyright = "pyramid_scheduler contributors"  # noqa: A001 - Sphinx's name

try:
    release = metadata.version("pyramid_scheduler")
except metadata.PackageNotFoundError:
    release = "0+unknown"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinxcontrib.autoprogram",
]

# No intersphinx: the build must not need the network.
nitpicky = False
exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"pyramid_scheduler {release}"
html_theme_options = {
    "description": "Asynchronous, deferred, interval and cron jobs for Pyramid",
    "fixed_sidebar": True,
}


def _check_settings_reference(app):  # pragma: no cover - runs in the docs build
    """Warn (an error under ``-W``) when a setting the code accepts is missing
    from docs/settings.rst, so the reference cannot drift from settings.py."""
    from sphinx.util import logging

    from pyramid_scheduler.settings import KNOWN_KEYS, PREFIX

    path = os.path.join(app.srcdir, "settings.rst")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    wanted = sorted(KNOWN_KEYS) + ["broker.transport_options.*", "apscheduler.*"]
    for key in wanted:
        if f"``{PREFIX}{key}``" not in text:
            logging.getLogger(__name__).warning(
                "settings.rst does not document %s%s", PREFIX, key, location="settings")


def setup(app):
    app.connect("builder-inited", _check_settings_reference)
    return {"parallel_read_safe": True}
