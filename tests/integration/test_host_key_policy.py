"""StrictHostKeyChecking and UserKnownHostsFile from ssh_config, as OpenSSH applies them, against
the real sshd: `yes` refuses an unknown key (and so does OpenSSH with the same config), `accept-new`
records it, `no` connects even to a changed key; keys are read from every UserKnownHostsFile; and a
changed key's advice is a command that, run as printed, lets the next run through."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from ops import inventory
from ops.errors import HostKeyChanged, HostKeyUnknown
from ops.session import connect
from ops.transport import strict_mode
from tests.integration.test_transport import known_line, run_inv, write_inventory


def config(tmp_path: Path, server, strict: str | None, *known_hosts: Path) -> Path:
    lines = [
        "Host box",
        "    HostName 127.0.0.1",
        f"    Port {server.port}",
        f"    User {server.user}",
        f"    IdentityFile {server.key_path}",
        "    IdentitiesOnly yes",
        "    UserKnownHostsFile " + " ".join(f'"{k}"' for k in known_hosts),
    ]
    if strict is not None:
        lines.append(f"    StrictHostKeyChecking {strict}")
    path = tmp_path / f"ssh_config_{strict}"
    path.write_text("\n".join(lines) + "\n")
    return path


def inv_for(tmp_path: Path, ssh_config: Path) -> inventory.Inventory:
    return inventory.load(write_inventory(tmp_path, ssh_config, {"box": "box"}))


def ping(inv: inventory.Inventory) -> None:
    with connect(inv, inv.host("box")) as session:
        assert session.call("ping")["pong"] is True


def openssh(ssh_config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "box", "true"],
                          capture_output=True, text=True, timeout=30)


def test_strict_mode_reads_openssh_spellings():
    assert [strict_mode(v) for v in (None, "accept-new", "yes", "ask", "no", "off", "Yes")] == [
        "accept-new", "accept-new", "yes", "yes", "no", "no", "yes"]


def test_strict_yes_refuses_an_unknown_host_as_openssh_does(private_sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    cfg = config(tmp_path, private_sshd, "yes", kh)
    inv = inv_for(tmp_path, cfg)
    with pytest.raises(HostKeyUnknown) as info:
        ping(inv)
    err = info.value
    assert f"host key for [127.0.0.1]:{private_sshd.port} is not known" in err.message
    assert "StrictHostKeyChecking is yes" in err.message and err.exit_code == 3
    assert "ssh -o StrictHostKeyChecking=accept-new box true" in err.advice
    assert kh.read_text() == "", "nothing recorded under yes"
    assert openssh(cfg).returncode != 0, "OpenSSH refuses it too"

    r = run_inv(write_inventory(tmp_path, cfg, {"box": "box"}), "status")
    assert r.returncode == 3 and "is not known" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr

    kh.write_text(known_line(private_sshd))  # known now: yes connects (the healthy twin)
    ping(inv)
    assert openssh(cfg).returncode == 0


def test_accept_new_records_an_unknown_host_and_refuses_a_changed_one(private_sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    inv = inv_for(tmp_path, config(tmp_path, private_sshd, "accept-new", kh))
    ping(inv)
    assert kh.read_text() == known_line(private_sshd)
    private_sshd.rotate_host_key()
    with pytest.raises(HostKeyChanged):
        ping(inv)


def test_strict_no_connects_to_a_changed_key_without_recording_it(private_sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    inv = inv_for(tmp_path, config(tmp_path, private_sshd, "no", kh))
    ping(inv)
    assert kh.read_text() == known_line(private_sshd), "an unknown host is recorded under no"
    private_sshd.rotate_host_key()
    old = kh.read_text()
    ping(inv)
    assert kh.read_text() == old


def test_keys_are_read_from_every_user_known_hosts_file(private_sshd, tmp_path):
    first, second = tmp_path / "kh1", tmp_path / "kh2"
    first.write_text("")
    second.write_text(known_line(private_sshd))
    inv = inv_for(tmp_path, config(tmp_path, private_sshd, "yes", first, second))
    ping(inv)  # known from the second file, so yes lets it through
    assert first.read_text() == ""
    private_sshd.rotate_host_key()
    with pytest.raises(HostKeyChanged):  # and a changed key known only there is refused
        ping(inv)


def test_the_changed_key_advice_runs_as_printed_and_lets_the_next_run_through(private_sshd, tmp_path):
    kh = tmp_path / "known hosts"  # a space in the path: the advice must quote it
    inv = inv_for(tmp_path, config(tmp_path, private_sshd, None, kh))
    ping(inv)
    private_sshd.rotate_host_key()
    with pytest.raises(HostKeyChanged) as info:
        ping(inv)
    command = re.search(r"`(ssh-keygen -R [^`]+)`", info.value.advice).group(1)
    assert command == f"ssh-keygen -R '[127.0.0.1]:{private_sshd.port}' -f '{kh}'"
    r = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    ping(inv)  # accept-new (the default) records the new key
    assert kh.read_text().strip().endswith(private_sshd.host_public_key.split()[1])
