"""The sshd fixture is a real, working OpenSSH server (system ssh client and paramiko)."""

from __future__ import annotations

import base64
import subprocess
import time

import paramiko
import pytest

from tests.harness import SshServer, port_open

pytestmark = pytest.mark.ssh


def run_ssh(server: SshServer, *cmd: str, host: str = "opstest") -> subprocess.CompletedProcess:
    return subprocess.run(
        server.ssh_argv(*cmd, host=host),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_system_ssh_runs_a_command(sshd: SshServer) -> None:
    result = run_ssh(sshd, "echo hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"


def test_remote_env_has_default_path_and_user(sshd: SshServer) -> None:
    result = run_ssh(sshd, 'echo "$PATH"; id -un; command -v python3')
    assert result.returncode == 0, result.stderr
    path, user, python = result.stdout.splitlines()
    assert "/usr/bin" in path.split(":")
    assert user == sshd.user
    assert python.startswith("/")


def test_wildcard_alias_reaches_the_same_server(sshd: SshServer) -> None:
    result = run_ssh(sshd, "echo $SSH_CONNECTION", host="opstest-web1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == str(sshd.port)


def test_known_hosts_learns_the_host_key(sshd: SshServer) -> None:
    assert run_ssh(sshd, "true").returncode == 0
    key_type, key_b64 = sshd.host_public_key.split()[:2]
    known = sshd.known_hosts_path.read_text()
    assert f"[127.0.0.1]:{sshd.port} {key_type} {key_b64}" in known


def test_paramiko_connects_with_the_key(sshd: SshServer) -> None:
    key_type, key_b64 = sshd.host_public_key.split()[:2]
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        f"[{sshd.host}]:{sshd.port}", key_type, paramiko.Ed25519Key(data=base64.b64decode(key_b64))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            sshd.host,
            port=sshd.port,
            username=sshd.user,
            key_filename=str(sshd.key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        _, stdout, _ = client.exec_command("echo from-paramiko")
        assert stdout.read().decode() == "from-paramiko\n"
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def test_sftp_subsystem_works(sshd: SshServer, tmp_path) -> None:
    target = tmp_path / "sftp.txt"
    transport = paramiko.Transport((sshd.host, sshd.port))
    try:
        transport.connect(
            username=sshd.user, pkey=paramiko.Ed25519Key.from_private_key_file(str(sshd.key_path))
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(str(target), "w") as fh:
            fh.write("via sftp")
    finally:
        transport.close()
    assert target.read_text() == "via sftp"


def test_opsdead_refuses_quickly(sshd: SshServer) -> None:
    assert not port_open(sshd.dead_port)
    started = time.monotonic()
    result = run_ssh(sshd, "true", host="opsdead")
    assert result.returncode == 255
    assert "refused" in result.stderr.lower()
    assert time.monotonic() - started < 5


def test_paramiko_refused_on_opsdead(sshd: SshServer) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises((paramiko.ssh_exception.NoValidConnectionsError, ConnectionError)):
        client.connect(
            sshd.host,
            port=sshd.dead_port,
            username=sshd.user,
            key_filename=str(sshd.key_path),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
    client.close()


def test_rotated_host_key_is_refused(private_sshd: SshServer) -> None:
    assert run_ssh(private_sshd, "true").returncode == 0
    port = private_sshd.port
    private_sshd.rotate_host_key()
    assert private_sshd.port == port
    result = run_ssh(private_sshd, "true")
    assert result.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    private_sshd.reset_known_hosts()
    assert run_ssh(private_sshd, "true").returncode == 0
