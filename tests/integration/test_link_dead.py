"""A dead link is noticed in seconds. The host is a network namespace with its own sshd, reached
over a veth pair (traffic only to that namespace); the link is cut (veth down) while the deploy
waits for a service to start. The deploy must end within connect_timeout + the keepalive window
+ a few seconds, say the link died and that a rerun converges; and the rerun does converge.
Everything (sshd, namespace, veth, processes in it) is torn down at the end."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.transport import keepalive_settings
from tests.harness import SSHD, SshServer, git, port_open, wait_until
from tests.integration.deploykit import REPO_ROOT, Output, make_repo, run_inv, spawn_inv

ALIVE_INTERVAL, ALIVE_COUNT, CONNECT_TIMEOUT = 1, 3, 3


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


class NamespaceHost:
    """A network namespace joined to this one by a veth pair with a private /30."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"ops13-{tag}"
        self.outer, self.inner = f"o13h{tag}", f"o13n{tag}"
        used = _ip("-4", "route").stdout
        for _ in range(50):
            third, fourth = secrets.randbelow(256), secrets.randbelow(64) * 4
            net = f"10.213.{third}.{fourth}"
            if net not in used:
                break
        self.outer_ip, self.inner_ip = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"

    def up(self) -> None:
        steps = [
            ("netns", "add", self.ns),
            ("link", "add", self.outer, "type", "veth", "peer", "name", self.inner),
            ("link", "set", self.inner, "netns", self.ns),
            ("addr", "add", f"{self.outer_ip}/30", "dev", self.outer),
            ("link", "set", self.outer, "up"),
            ("-n", self.ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner),
            ("-n", self.ns, "link", "set", self.inner, "up"),
            ("-n", self.ns, "link", "set", "lo", "up"),
        ]
        for args in steps:
            p = _ip(*args)
            if p.returncode != 0:
                self.down()
                why = p.stderr.strip()
                pytest.skip(f"cannot set up a network namespace here (ip {' '.join(args)}): {why}")

    def cut(self) -> None:
        assert _ip("link", "set", self.outer, "down").returncode == 0

    def mend(self) -> None:
        assert _ip("link", "set", self.outer, "up").returncode == 0

    def pids(self) -> list[int]:
        return [int(x) for x in _ip("netns", "pids", self.ns).stdout.split()]

    def down(self) -> None:
        # every process in our namespace was started by this test (its sshd, agents, services)
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.pids(), timeout=10, message="processes in the test namespace gone")
        _ip("link", "del", self.outer)
        _ip("netns", "del", self.ns)


class NamespaceSshd(SshServer):
    """The test sshd, run inside the namespace on its veth address."""

    def __init__(self, workdir: Path, host: NamespaceHost) -> None:
        super().__init__(workdir)
        self.netns = host
        self.host = host.inner_ip

    def _write_files(self) -> None:
        super()._write_files()
        with open(self.ssh_config_path, "a") as f:
            f.write(f"Host opsfar\n    HostName {self.host}\n    Port {self.port}\n"
                    f"    User {self.user}\n    IdentityFile {self.key_path}\n    IdentitiesOnly yes\n"
                    f"    UserKnownHostsFile {self.known_hosts_path}\n"
                    f"    ServerAliveInterval {ALIVE_INTERVAL}\n    ServerAliveCountMax {ALIVE_COUNT}\n")

    def start(self, timeout: float = 10.0) -> SshServer:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns.ns, SSHD, "-D", "-e", "-f", str(self.sshd_config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_until(lambda: port_open(self.port, self.host), timeout, message="sshd in the namespace")
        return self


@pytest.fixture
def far(tmp_path: Path) -> Iterator[NamespaceSshd]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        if os.environ.get("CI"):
            pytest.fail("the dead-link test needs root and iproute2", pytrace=False)
        pytest.skip("the dead-link test needs root and iproute2 (ip netns)")
    host = NamespaceHost()
    host.up()
    server = NamespaceSshd(tmp_path / "sshd", host)
    try:
        server._write_files()
        server.start()
        yield server
    finally:
        server.close()
        host.down()


SLOW = """
[hosts.far]
ssh = "opsfar"
path = "{checkout}"
state_dir = "{state}"
connect_timeout = {connect}
command_timeout = 60
services = ["slow"]

[services.slow]
cmd = "python3 late_ready.py --delay 8"
log = "${{state_dir}}/logs/slow.log"
ready.log = "^ready"
ready.timeout = 30
stop_timeout = 2
"""


def test_a_link_cut_mid_start_ends_the_deploy_in_seconds_and_a_rerun_converges(tmp_path, far):
    repo = make_repo(tmp_path)
    shutil.copy(REPO_ROOT / "tests/fixtures/services/late_ready.py", repo / "late_ready.py")
    git(repo, "add", "late_ready.py")
    git(repo, "commit", "-qm", "slow service")
    state = tmp_path / "hosts/far/state"
    inv_path = tmp_path / "hosts.toml"
    inv_path.write_text(f'[ssh]\nconfig = "{far.ssh_config_path}"\n' + SLOW.format(
        checkout=tmp_path / "hosts/far/checkout", state=state, connect=CONNECT_TIMEOUT))
    # the keepalive settings come from ssh_config
    from fabric import Config, Connection

    conn = Connection("opsfar", config=Config(runtime_ssh_path=str(far.ssh_config_path)))
    assert keepalive_settings(conn.ssh_config) == (ALIVE_INTERVAL, ALIVE_COUNT)

    proc = spawn_inv(inv_path, repo, "deploy")
    out = Output(proc)
    try:
        log = state / "logs/slow.log"
        wait_until(lambda: log.exists() and "booting" in log.read_text(), timeout=60,
                   message="the service is starting")
        far.netns.cut()
        cut = time.monotonic()
        text = out.finish(timeout=120)
        took = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
    bound = CONNECT_TIMEOUT + ALIVE_INTERVAL * (ALIVE_COUNT + 1) + 6  # + a few seconds (busy machine)
    print(f"\nlink cut mid-start: inv deploy ended {took:.1f}s after the cut (bound {bound}s)")
    assert took < bound, f"{took:.1f}s: {text}"
    assert proc.returncode == 3, text
    assert "the link died" in text and "run the same command again" in text, text
    assert "command_timeout" not in text
    # the host finished its start on its own; once the link is back the rerun converges
    far.netns.mend()
    wait_until(lambda: "ready" in log.read_text(), timeout=30, message="the host finished the start")
    r = run_inv(inv_path, repo, "deploy", "--lock-wait", "90", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_inv(inv_path, repo, "status", "--host", "far")
    assert "running" in r.stdout, r.stdout + r.stderr
    run_inv(inv_path, repo, "stop", "--host", "far")
