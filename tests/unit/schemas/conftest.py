"""Fixtures shared by the schema tests."""

from __future__ import annotations

import pytest

from sendonce.schemas.codec import SchemaCodec


@pytest.fixture
def codec() -> SchemaCodec:
    """A fresh codec with the package's schemas (tests may register more on it)."""
    return SchemaCodec()
