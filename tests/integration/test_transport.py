"""The SSH transport against a real sshd: bounded connects (a port that never sends the SSH banner,
also as a ProxyJump hop), OpenSSH's accept-new host-key policy (record a new key; refuse a changed
one without touching known_hosts), the agent shipped once per version (and again when the copy on
the host is damaged), and ProxyJump."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fabric import Connection

from ops import agentpkg, inventory
from ops.errors import HostKeyChanged, Unreachable
from ops.session import HostSession, connect, on_hosts
from ops.transport import SSHTransport, fingerprint
from tests.harness import SshServer

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 3
SERVICE = '[services.idle]\ncmd = "sleep 1000"\n'


def write_inventory(tmp_path: Path, ssh_config: Path, hosts: dict[str, str]) -> Path:
    """One host per alias (host name = alias unless given as name=alias), each running `idle`."""
    parts = [f'[ssh]\nconfig = "{ssh_config}"\n', f"[defaults]\nconnect_timeout = {CONNECT_TIMEOUT}\n"]
    for name, alias in hosts.items():
        via = "local = true" if alias == "local" else f'ssh = "{alias}"'
        state_dir = tmp_path / f"state-{name}"
        parts.append(
            f'[hosts.{name}]\n{via}\npath = "{REPO}"\nstate_dir = "{state_dir}"\nservices = ["idle"]\n'
        )
    parts.append(SERVICE)
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(parts))
    return path


def client_entry(alias: str, server: SshServer, known_hosts: Path, *extra: str, hostname: str = "127.0.0.1"):
    return "\n".join(
        [
            f"Host {alias}",
            f"    HostName {hostname}",
            *extra,
            f"    User {server.user}",
            f"    IdentityFile {server.key_path}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts}",
            "",
        ]
    )


def run_inv(inv_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env={**os.environ, "OPS_INVENTORY": str(inv_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ping(inv: inventory.Inventory, name: str) -> HostSession:
    """Open a session on the host, check its agent answers, close it; return the session."""
    with connect(inv, inv.host(name)) as session:
        assert session.call("ping")["pong"] is True
    return session


# --- a port that never answers ------------------------------------------------------------------


@pytest.fixture
def config_with_blackhole(sshd, tmp_path, blackhole) -> Path:
    port, _ = blackhole
    kh = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(
        sshd.ssh_config_path.read_text()
        + "\n"
        + client_entry("opsblackhole", sshd, kh, f"    Port {port}")
        + client_entry("opsviablackhole", sshd, kh, f"    Port {sshd.port}", "    ProxyJump opsblackhole")
    )
    return config


def test_a_host_that_never_sends_the_banner_is_unreachable_within_the_connect_timeout(
    tmp_path, config_with_blackhole, blackhole
):
    """Directly, and as the ProxyJump hop of a host that is itself fine (both in parallel)."""
    hosts = {"black": "opsblackhole", "viablack": "opsviablackhole"}
    inv = inventory.load(write_inventory(tmp_path, config_with_blackhole, hosts))
    t = time.monotonic()
    direct, jumped = on_hosts(inv, [inv.host("black"), inv.host("viablack")], lambda s: s.call("ping"))
    took = time.monotonic() - t
    assert blackhole[1], "the client never reached the blackhole: the test proves nothing"
    assert CONNECT_TIMEOUT - 0.5 < took < CONNECT_TIMEOUT + 1.5, f"took {took:.2f}s"
    assert isinstance(direct.error, Unreachable) and isinstance(jumped.error, Unreachable)
    user = getpass.getuser()
    assert direct.error.message == (
        f"black: {user}@127.0.0.1:{blackhole[0]} accepted the TCP connection but did not complete "
        f"the SSH handshake within {CONNECT_TIMEOUT}s"
    )
    assert f"(via ProxyJump {user}@127.0.0.1:{blackhole[0]})" in jumped.error.message
    assert "did not complete the SSH handshake" in jumped.error.message


def test_inv_status_shows_the_blackhole_unreachable_and_the_other_host_in_time(
    tmp_path, config_with_blackhole
):
    inv_path = write_inventory(
        tmp_path, config_with_blackhole, {"opstest": "opstest", "opsblackhole": "opsblackhole"}
    )
    t = time.monotonic()
    r = run_inv(inv_path, "status", "--host", "all")
    took = time.monotonic() - t
    assert r.returncode == 3, r.stdout + r.stderr
    assert took < CONNECT_TIMEOUT + 2.5, f"took {took:.2f}s"  # + the command's own start-up
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["opstest"][1:3] == ["idle", "stopped"]
    assert rows["opsblackhole"][2] == "unreachable"
    assert "did not complete the SSH handshake within 3s" in r.stdout
    assert r.stderr == ""  # no paramiko thread traceback leaking out


# --- host keys: accept-new ---------------------------------------------------------------------


def known_line(server: SshServer) -> str:
    key_type, key_b64 = server.host_public_key.split()[:2]
    return f"[127.0.0.1]:{server.port} {key_type} {key_b64}\n"


def test_a_new_host_key_is_recorded_in_openssh_format(private_sshd, tmp_path):
    inv = inventory.load(write_inventory(tmp_path, private_sshd.ssh_config_path, {"box": "opstest"}))
    assert private_sshd.known_hosts_path.read_text() == ""
    ping(inv, "box")
    assert private_sshd.known_hosts_path.read_text() == known_line(private_sshd)
    ping(inv, "box")  # known now: not recorded twice
    assert private_sshd.known_hosts_path.read_text() == known_line(private_sshd)
    # OpenSSH itself trusts what was recorded (strict checking: it would refuse an unknown key).
    r = subprocess.run(
        [*private_sshd.ssh_argv("true")[:-1], "-o", "StrictHostKeyChecking=yes", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


def test_a_changed_host_key_is_refused_and_known_hosts_is_left_alone(private_sshd, tmp_path):
    inv_path = write_inventory(tmp_path, private_sshd.ssh_config_path, {"box": "opstest"})
    inv = inventory.load(inv_path)
    ping(inv, "box")
    recorded = private_sshd.known_hosts_path.read_bytes()
    assert recorded == known_line(private_sshd).encode()

    private_sshd.rotate_host_key()
    new_key = paramiko.Ed25519Key(filename=str(private_sshd.host_key_path))
    with pytest.raises(HostKeyChanged) as info:
        ping(inv, "box")
    err = info.value
    assert err.message.startswith("box: host key for 127.0.0.1 has CHANGED")
    assert fingerprint(new_key) in err.message
    assert str(private_sshd.known_hosts_path) in err.message
    assert "ssh-keygen -R" in err.advice
    assert err.exit_code == 3
    assert private_sshd.known_hosts_path.read_bytes() == recorded

    r = run_inv(inv_path, "status")
    assert r.returncode == 3
    assert "has CHANGED" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert private_sshd.known_hosts_path.read_bytes() == recorded


def test_a_host_key_of_another_type_is_refused_too(private_sshd, tmp_path):
    inv = inventory.load(write_inventory(tmp_path, private_sshd.ssh_config_path, {"box": "opstest"}))
    ping(inv, "box")
    recorded = private_sshd.known_hosts_path.read_bytes()
    private_sshd.stop()
    for p in (private_sshd.host_key_path, Path(f"{private_sshd.host_key_path}.pub")):
        p.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(private_sshd.host_key_path)],
        check=True,
        capture_output=True,
    )
    private_sshd.start()
    with pytest.raises(HostKeyChanged, match="got ecdsa-sha2-nistp256"):
        ping(inv, "box")
    assert private_sshd.known_hosts_path.read_bytes() == recorded


# --- the agent is shipped once per version ---------------------------------------------------------


@pytest.fixture(scope="module")
def cache_sshd(sshd, tmp_path_factory) -> Iterator[tuple[SshServer, Path]]:
    """A private sshd whose sessions get XDG_CACHE_HOME=<a tmp dir> (sshd_config SetEnv), so the
    agent cache on this "host" can be observed. (Requesting `sshd` brings its skip/fail rules.)"""
    workdir = tmp_path_factory.mktemp("cache-sshd")
    cache = workdir / "cache"
    server = SshServer(workdir / "sshd")
    server._write_files()
    with open(server.sshd_config_path, "a") as f:
        f.write(f"SetEnv XDG_CACHE_HOME={cache}\n")
    try:
        server.start()
        yield server, cache
    finally:
        server.close()


@pytest.fixture(params=["ssh", "local"])
def cache_host(request, cache_sshd, tmp_path, monkeypatch) -> tuple[inventory.Inventory, Path]:
    """An inventory host `box` (over SSH or local) whose agent cache starts empty: for SSH the
    server sets XDG_CACHE_HOME in its sessions; for local the agent inherits ours."""
    server, cache = cache_sshd
    if request.param == "local":
        cache = tmp_path / "cache"
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    shutil.rmtree(cache, ignore_errors=True)
    alias = "opstest" if request.param == "ssh" else "local"
    inv = inventory.load(write_inventory(tmp_path, server.ssh_config_path, {"box": alias}))
    return inv, cache / "ops-agent" / agentpkg.bundle().filename


def test_the_agent_is_shipped_once_and_reused(cache_host):
    inv, pyz = cache_host
    assert not pyz.exists()
    first = ping(inv, "box")
    assert first.agent.shipped is True
    assert pyz.read_bytes() == agentpkg.bundle().data
    assert first.agent.hello["version"] == agentpkg.bundle().version
    mtime = pyz.stat().st_mtime_ns

    second = ping(inv, "box")
    assert second.agent.shipped is False
    assert pyz.stat().st_mtime_ns == mtime


DAMAGE = {
    "missing": lambda pyz: pyz.unlink(),
    "garbage": lambda pyz: pyz.write_bytes(b"not a zip at all\n"),
    "truncated": lambda pyz: pyz.write_bytes(pyz.read_bytes()[: pyz.stat().st_size // 2]),
    "empty": lambda pyz: pyz.write_bytes(b""),
}


@pytest.mark.parametrize(
    ("cache_host", "damage"),
    [("local", d) for d in DAMAGE] + [("ssh", "garbage"), ("ssh", "truncated")],  # ssh: slower
    indirect=["cache_host"],
)
def test_a_missing_or_damaged_agent_is_shipped_again(cache_host, damage):
    inv, pyz = cache_host
    ping(inv, "box")
    DAMAGE[damage](pyz)
    again = ping(inv, "box")
    assert again.agent.shipped is True
    assert pyz.read_bytes() == agentpkg.bundle().data
    assert ping(inv, "box").agent.shipped is False


def test_an_agent_of_another_version_under_this_name_is_replaced(cache_host, tmp_path):
    inv, pyz = cache_host
    ping(inv, "box")
    other_dir = tmp_path / "other-agent"
    other_dir.mkdir()
    for p in agentpkg.AGENT_DIR.glob("*.py"):
        (other_dir / p.name).write_bytes(p.read_bytes())
    (other_dir / "server.py").write_text((other_dir / "server.py").read_text() + "\n# other\n")
    pyz.write_bytes(agentpkg.build(other_dir).data)
    again = ping(inv, "box")
    assert again.agent.shipped is True
    assert again.agent.hello["version"] == agentpkg.bundle().version


def test_inv_status_ships_the_agent_into_xdg_cache_home(tmp_path):
    inv_path = write_inventory(tmp_path, tmp_path / "no_ssh_config", {"here": "local"})
    cache = tmp_path / "xdg"
    r = run_inv(inv_path, "status", XDG_CACHE_HOME=str(cache))
    assert r.returncode == 6, r.stderr  # reached: its service is stopped (not 3, unreachable)
    # One agent, named by its version. (Not compared with this process's bundle(): the agent
    # sources may change between the two builds while other work goes on in the checkout.)
    (pyz,) = (cache / "ops-agent").iterdir()
    version = pyz.name.removeprefix("agent-").removesuffix(".pyz")
    with zipfile.ZipFile(pyz) as zf:
        assert f"server.main(version={version!r})" in zf.read("__main__.py").decode()


# --- ProxyJump --------------------------------------------------------------------------------


@pytest.fixture
def jump_config(sshd, tmp_path) -> tuple[Path, Path]:
    """opsjump = the test sshd reached through the jump host `opsjumphost` (the same sshd, under
    the name localhost so its known_hosts entry is told apart from the last hop's)."""
    kh = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(
        client_entry("opsjump", sshd, kh, f"    Port {sshd.port}", "    ProxyJump opsjumphost")
        + client_entry("opsjumphost", sshd, kh, f"    Port {sshd.port}", hostname="localhost")
    )
    return config, kh


def test_status_works_through_a_proxyjump_host(sshd, tmp_path, jump_config):
    config, kh = jump_config
    inv = inventory.load(write_inventory(tmp_path, config, {"viajump": "opsjump"}))
    transport = SSHTransport(inv.host("viajump"), inv)
    transport.open()
    try:
        conn = transport.conn
        assert isinstance(conn.gateway, Connection) and conn.gateway.host == "localhost"
        assert isinstance(conn.transport.sock, paramiko.Channel)  # tunnelled, not a direct socket
        gateway_transport = conn.gateway.transport
    finally:
        transport.close()
    assert not gateway_transport.is_active()  # the hop is closed with the connection
    # Both hops went through the accept-new policy and were recorded.
    assert sorted(line.split()[0] for line in kh.read_text().splitlines()) == [
        f"[127.0.0.1]:{sshd.port}",
        f"[localhost]:{sshd.port}",
    ]
    r = run_inv(write_inventory(tmp_path, config, {"viajump": "opsjump"}), "status", "--json")
    assert r.returncode == 6, r.stderr  # reached: its service is stopped (not 3, unreachable)
    assert '"reachable": true' in r.stdout
