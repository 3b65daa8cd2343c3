"""Fixtures for the systemd tests: one real systemd booted in namespaces per session
(tests/systemd_rig.py). Skipped with the reason where it cannot boot (not root, no systemd),
but never in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.systemd_rig import SystemdBox, systemd_box_unavailable


def require_box() -> None:
    problem = systemd_box_unavailable()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip tests: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def sdbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdBox]:
    """A booted systemd box shared by the session (do not reboot it: use ``private_sdbox``)."""
    require_box()
    box = SystemdBox(tmp_path_factory.mktemp("sdbox"))
    box.boot()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def private_sdbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdBox]:
    """A box for one test (tests that reboot it)."""
    require_box()
    box = SystemdBox(tmp_path_factory.mktemp("sdbox-private"))
    box.boot()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def scene(sdbox: SystemdBox, tmp_path):  # type: ignore[no-untyped-def]
    """A per-test scene on the shared box, connecting as root."""
    from tests.systemd.unitrig import UnitScene

    s = UnitScene(sdbox, tmp_path)
    try:
        yield s
    finally:
        s.cleanup()
