"""A task begins connecting to its hosts as soon as it knows them (ops/session.py open_early): the
session it later connects with is that one, or the very error its opening raised; a session
nobody adopts is closed; another inventory never adopts it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ops import session as S
from ops.errors import TransportError, Unreachable
from tests.harness import wait_until


class FakeSession:
    """Stands in for HostSession: records how it was opened and closed."""

    opened: list[FakeSession] = []

    def __init__(self, inventory: Any, host: Any) -> None:
        self.inventory, self.host = inventory, host
        self.closed = 0
        self.opened_by = ""
        self.gate = getattr(host, "gate", None)

    def open(self) -> FakeSession:
        if self.gate is not None:
            assert self.gate.wait(10)
        if getattr(self.host, "fail", False):
            raise Unreachable(self.host.name, "connection refused")
        self.opened_by = threading.current_thread().name
        FakeSession.opened.append(self)
        return self

    def close(self) -> None:
        self.closed += 1


class Host:
    connect_timeout, command_timeout = 5.0, 60.0

    def __init__(self, name: str, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.name, self.fail, self.gate = name, fail, gate


def wait_closed() -> None:
    """The one session opened gets closed (bounded wait)."""
    wait_until(lambda: FakeSession.opened and FakeSession.opened[0].closed, 10)
    assert FakeSession.opened[0].closed == 1


@pytest.fixture(autouse=True)
def fake_sessions(monkeypatch: pytest.MonkeyPatch):
    FakeSession.opened = []
    monkeypatch.setattr(S, "HostSession", FakeSession)
    S.drop_early()
    yield
    S.drop_early()


def test_connect_adopts_the_session_opened_early_in_the_background() -> None:
    inv, host = object(), Host("box")
    S.open_early(inv, [host])
    with S.connect(inv, host) as session:
        assert session.opened_by.startswith("open-early-")
    assert session.closed == 1
    assert FakeSession.opened == [session]  # opened once, not again by connect


def test_connect_raises_the_error_of_the_early_opening() -> None:
    inv, host = object(), Host("box", fail=True)
    S.open_early(inv, [host])
    with pytest.raises(Unreachable, match="connection refused"), S.connect(inv, host):
        pass


def test_another_inventory_does_not_adopt_the_session() -> None:
    inv, other, host = object(), object(), Host("box")
    S.open_early(inv, [host])
    with S.connect(other, host) as session:
        assert session.inventory is other
        assert not session.opened_by.startswith("open-early-")


def test_a_session_nobody_adopted_is_closed_by_drop_early() -> None:
    inv, host = object(), Host("box")
    S.open_early(inv, [host])
    S.drop_early()
    # its opening may still be running: it is closed as soon as it ends
    with S._EARLY_LOCK:
        assert S._EARLY == {}
    wait_closed()


def test_drop_early_does_not_wait_for_a_slow_opening() -> None:
    gate = threading.Event()
    inv, host = object(), Host("slow", gate=gate)
    S.open_early(inv, [host])
    S.drop_early()  # returns although the opening is blocked
    assert FakeSession.opened == []
    gate.set()
    wait_closed()


def test_each_host_is_opened_early_once() -> None:
    inv, host = object(), Host("box")
    S.open_early(inv, [host])
    S.open_early(inv, [host])
    with S.connect(inv, host):
        pass
    assert len(FakeSession.opened) == 1


def test_waiting_for_an_early_opening_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # its own timeouts bound an opening; should one ever hang anyway, connect says so, and the
    # session is closed if it ever opens
    monkeypatch.setattr(S, "open_bound", lambda host: 0.2)
    gate = threading.Event()
    inv, host = object(), Host("stuck", gate=gate)
    S.open_early(inv, [host])
    with pytest.raises(TransportError, match="did not end within 0s"), S.connect(inv, host):
        pass
    gate.set()
    wait_closed()
