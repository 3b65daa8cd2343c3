"""The same transport behaviours, proven against both transports over the real sshd: paramiko
(the default) and OpenSSH (`[ssh] transport = "openssh"`, the system ssh binary): the agent runs and
answers, a refused port and a host that never sends the SSH banner are unreachable with the same
messages within the connect timeout, a new host key is recorded (accept-new), a changed one is
refused with the same message and known_hosts left alone, and `inv status` exits 3 for it."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops import inventory, openssh
from ops.errors import HostKeyChanged, Unreachable
from ops.session import connect

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 3
TRANSPORTS = ["paramiko", "openssh"]


def _write(tmp_path: Path, server, transport: str, alias: str = "opstest", extra: str = "") -> Path:
    path = tmp_path / f"hosts-{transport}.toml"
    path.write_text(
        f'[ssh]\nconfig = "{server.ssh_config_path}"\ntransport = "{transport}"\n'
        f"[defaults]\nconnect_timeout = {CONNECT_TIMEOUT}\n"
        f'[hosts.box]\nssh = "{alias}"\npath = "{REPO}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'services = ["idle"]\n[services.idle]\ncmd = "sleep 1000"\n{extra}'
    )
    return path


def _ping(inv: inventory.Inventory) -> dict:
    with connect(inv, inv.host("box")) as session:
        return session.call("ping")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_agent_runs_and_answers(transport, sshd, tmp_path):
    inv = inventory.load(str(_write(tmp_path, sshd, transport)))
    assert inv.transport == transport
    with connect(inv, inv.host("box")) as session:
        assert type(session.transport).__name__ == {"paramiko": "SSHTransport",
                                                     "openssh": "OpenSSHTransport"}[transport]
        assert session.call("ping")["pong"] is True
        assert session.call("exec", {"cmd": "echo hi"})["stdout"] == "hi\n"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_port_is_unreachable_with_the_same_message(transport, sshd, tmp_path):
    inv = inventory.load(str(_write(tmp_path, sshd, transport, alias="opsdead")))
    with pytest.raises(Unreachable) as info:
        _ping(inv)
    assert info.value.message == (
        f"box: cannot connect to {getpass.getuser()}@127.0.0.1:{sshd.dead_port}: "
        f"Unable to connect to port {sshd.dead_port} on 127.0.0.1")
    assert info.value.exit_code == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_host_that_never_sends_the_banner_is_unreachable_within_the_connect_timeout(
        transport, sshd, tmp_path, blackhole):
    port, _ = blackhole
    config = tmp_path / "ssh_config"
    config.write_text(sshd.ssh_config_path.read_text() + "\n" + "\n".join([
        "Host opsblackhole", "    HostName 127.0.0.1", f"    Port {port}", f"    User {sshd.user}",
        f"    IdentityFile {sshd.key_path}", "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {tmp_path / 'kh'}", ""]))
    path = _write(tmp_path, sshd, transport, alias="opsblackhole")
    path.write_text(path.read_text().replace(str(sshd.ssh_config_path), str(config)))
    inv = inventory.load(str(path))
    t = time.monotonic()
    with pytest.raises(Unreachable) as info:
        _ping(inv)
    took = time.monotonic() - t
    assert took < CONNECT_TIMEOUT + 10, f"took {took:.1f}s"
    assert info.value.message == (
        f"box: {sshd.user}@127.0.0.1:{port} accepted the TCP connection but did not complete "
        f"the SSH handshake within {CONNECT_TIMEOUT}s")


def _known_line(server) -> str:
    kind, key = server.host_public_key.split()[:2]
    return f"[127.0.0.1]:{server.port} {kind} {key}\n"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_new_host_key_is_recorded_then_trusted(transport, private_sshd, tmp_path):
    inv = inventory.load(str(_write(tmp_path, private_sshd, transport)))
    assert private_sshd.known_hosts_path.read_text() == ""
    _ping(inv)
    recorded = private_sshd.known_hosts_path.read_text()
    assert recorded.strip(), "accept-new recorded nothing"
    kind, key = private_sshd.host_public_key.split()[:2]
    assert f"{kind} {key}" in recorded
    _ping(inv)  # known now: trusted, not recorded twice
    assert private_sshd.known_hosts_path.read_text() == recorded
    r = subprocess.run([*private_sshd.ssh_argv("true")[:-1], "-o", "StrictHostKeyChecking=yes", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_changed_host_key_is_refused_and_known_hosts_is_left_alone(transport, private_sshd, tmp_path):
    path = _write(tmp_path, private_sshd, transport)
    inv = inventory.load(str(path))
    _ping(inv)
    recorded = private_sshd.known_hosts_path.read_bytes()
    private_sshd.rotate_host_key()
    with pytest.raises(HostKeyChanged) as info:
        _ping(inv)
    err = info.value
    assert err.message.startswith("box: host key for 127.0.0.1 has CHANGED (got ssh-ed25519 SHA256:")
    assert str(private_sshd.known_hosts_path) in err.message
    assert err.message.endswith(f"refusing to connect to {private_sshd.user}@127.0.0.1:{private_sshd.port}")
    assert "ssh-keygen -R" in err.advice and err.exit_code == 3
    assert private_sshd.known_hosts_path.read_bytes() == recorded
    r = subprocess.run([sys.executable, "-m", "invoke", "status"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OPS_INVENTORY": str(path)}, timeout=60)
    assert r.returncode == 3
    assert "has CHANGED" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert private_sshd.known_hosts_path.read_bytes() == recorded


def test_the_openssh_command_line_is_exactly(sshd, tmp_path):
    inv = inventory.load(str(_write(tmp_path, sshd, "openssh")))
    assert openssh.argv(inv.host("box"), inv, "echo hi") == [
        "ssh", "-F", str(sshd.ssh_config_path), "-T", "-o", "BatchMode=yes", "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "--", "opstest", "echo hi"]
    assert openssh.destination("me@box:2222") == "ssh://me@box:2222"
    assert openssh.destination("box") == "box"


def test_an_unknown_transport_is_refused_naming_the_key(tmp_path, sshd):
    path = _write(tmp_path, sshd, "telnet")
    with pytest.raises(inventory.InventoryError, match=r"\[ssh\] key 'transport' must be one of"):
        inventory.load(str(path))
