"""After authentication, paramiko's socket acknowledges at once what it receives (ops/transport.py
QuickAckSocket): sshd keeps Nagle's algorithm on for sessions without a terminal, and without it
the first channel's confirmation waited ~43 ms for a delayed ACK (bench/RESULTS.md, issue 18)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ops import inventory
from ops.transport import QuickAckSocket, SSHTransport, quick_acks

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")


class RecordingSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def recv(self, n: int) -> bytes:
        return b"x" * min(n, 3)

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options.append((level, name, value))

    def fileno(self) -> int:
        return 7


def test_every_receive_sends_its_ack_at_once() -> None:
    raw = RecordingSocket()
    sock = QuickAckSocket(raw)  # type: ignore[arg-type]
    assert sock.recv(10) == b"xxx"
    assert sock.recv(10) == b"xxx"
    assert raw.options == [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)] * 2
    assert sock.fileno() == 7  # everything else is the socket's own


def test_a_packetizer_holding_something_else_is_left_alone() -> None:
    class Packetizer:
        _Packetizer__socket = object()

    class Transport:
        packetizer = Packetizer()

    mine = socket.socket()
    try:
        assert quick_acks(Transport(), mine) is False
        assert not isinstance(Transport.packetizer._Packetizer__socket, QuickAckSocket)
    finally:
        mine.close()


def test_an_ssh_connection_reads_through_the_quick_ack_socket(sshd, tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n[hosts.box]\nssh = "opstest"\n'
                    f'path = "{tmp_path}"\nservices = []\n')
    inv = inventory.load(str(path))
    t = SSHTransport(inv.host("box"), inv)
    t.open()
    try:
        packetizer = t.conn.transport.packetizer
        assert isinstance(packetizer._Packetizer__socket, QuickAckSocket)
        for word in ("one", "two"):  # channels work as before through it
            ch = t.channel(f"echo {word}")
            assert ch.read_line(time.monotonic() + 10) == word.encode()
            assert ch.exit_status(10) == 0
            ch.close()
    finally:
        t.close()
