"""Generic fixtures: a real sshd for integration tests, and where the demo services live."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import SshServer, sshd_available, start_sshd

REPO_ROOT = Path(__file__).resolve().parent.parent


def _require_sshd() -> None:
    problem = sshd_available()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip tests: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private sshd on 127.0.0.1 shared by the whole session (client config: ``.ssh_config_path``,
    hosts ``opstest``, ``opstest-*`` and ``opsdead``). Do not rotate its host key: use
    ``private_sshd`` for tests that break it."""
    _require_sshd()
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A dedicated sshd for one test (for tests that rotate host keys or stop the server)."""
    _require_sshd()
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """Absolute path of examples/demo (api.py, daemon.py, worker.py)."""
    return REPO_ROOT / "examples" / "demo"


@pytest.fixture(scope="session")
def services_dir() -> Path:
    """Absolute path of tests/fixtures/services (misbehaving services for failure tests)."""
    return REPO_ROOT / "tests" / "fixtures" / "services"
