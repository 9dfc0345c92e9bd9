"""Fixtures of the store's tests: a ledger on a real SQLite file or on the
real PostgreSQL (skipped when unreachable, failed when ``CI=true``), its
tables under a prefix of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import jobstore_url, unique
from pyramid_scheduler.store.db import create_db_engine
from pyramid_scheduler.store.ledger import Ledger


@pytest.fixture
def ledger(tmp_var: Path, store_kind: str, drop_tables: list[tuple[str, str]]) -> Iterator[Ledger]:
    url = jobstore_url(store_kind, tmp_var)
    prefix = f"{unique('st')}_"
    drop_tables.append((url, prefix))
    engine = create_db_engine(url)
    try:
        yield Ledger(engine, prefix)
    finally:
        engine.dispose()
