"""Fixtures shared by the integration tests."""

from __future__ import annotations

import socket
import threading
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


@pytest.fixture
def blackhole() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server that accepts connections and never writes a byte (no SSH banner)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        done.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        server.close()
