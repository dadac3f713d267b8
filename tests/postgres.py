"""A schema of its own on the test PostgreSQL server (COMFYSWEEP_TEST_POSTGRES_URL), per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

SERVER = os.environ.get("COMFYSWEEP_TEST_POSTGRES_URL")


@contextlib.contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """A store URL whose tables live in a new schema (search_path), dropped afterwards."""
    if not SERVER:
        pytest.skip("COMFYSWEEP_TEST_POSTGRES_URL is not set")
    admin = sa.create_engine(SERVER)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        yield f"{SERVER}?options=-csearch_path%3D{schema}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    finally:
        admin.dispose()
