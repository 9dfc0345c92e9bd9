"""The fault suite uses the integration tests' harness."""

from integration.conftest import harness, make_harness  # noqa: F401 - fixtures
