"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.deploykit import stop_everything


@pytest.fixture
def used() -> Iterator[list[Path]]:
    """Inventories a deploy test wrote: every service of their hosts is stopped at the end."""
    paths: list[Path] = []
    yield paths
    stop_everything(paths)
