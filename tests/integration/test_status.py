"""`inv status` against a real sshd and against `local`: the same demo services, described once,
must give the same answer over both transports; an unreachable host is shown as such (with the
reason, within the connect timeout) next to the hosts that answered; a host whose python is wrong
fails with advice, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import control, inventory
from ops.errors import AgentError
from ops.session import connect, on_hosts
from tests.harness import SshServer, free_port, kill_until_none_left, pid_alive, processes_with

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 3

# The demo of hosts.toml: a daemon supervising an API child (port, token-protected health), and a
# worker that starts after the daemon.
DEMO_SERVICES = "\n".join(
    [
        "[services.demo_daemon]",
        'cmd = "python3 examples/demo/daemon.py auto --api-port ${port:demo_api}'
        ' --api-log ${state_dir}/logs/demo_api.log"',
        'log = "${state_dir}/logs/demo_daemon.log"',
        'env_file = "examples/demo/secrets/demo.env"',
        'children = ["demo_api"]',
        'ready.log = "auto-answering"',
        "",
        "[services.demo_api]",
        r'match = "examples/demo/api\\.py --port ${port}"',
        "port = 18770",
        'log = "${state_dir}/logs/demo_api.log"',
        'health.url = "http://127.0.0.1:${port}/v1/lookup?name=alice"',
        'health.header_files = { X-Demo-Token = "examples/demo/secrets/demo.token" }',
        "",
        "[services.demo_worker]",
        'cmd = "python3 examples/demo/worker.py --heartbeat ${state_dir}/worker-heartbeat.json"',
        'after = ["demo_daemon"]',
        'ready.log = "worker ready"',
        "",
    ]
)


def inventory_text(ssh_config: Path | str, hosts: str, services: str = DEMO_SERVICES) -> str:
    return (
        f'[ssh]\nconfig = "{ssh_config}"\n\n'
        f"[defaults]\nconnect_timeout = {CONNECT_TIMEOUT}\nready_timeout = 20\nstop_timeout = 5\n\n"
        f"{hosts}\n{services}"
    )


def demo_host(name: str, via: str, state_dir: Path, api_port: int) -> str:
    return (
        f"[hosts.{name}]\n{via}\n"
        f'path = "{REPO}"\nstate_dir = "{state_dir}"\n'
        'services = ["demo_daemon", "demo_worker"]\n'
        f"overrides.demo_api.port = {api_port}\n"
    )


def run_inv(inv_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, piped (so plain output), with OPS_INVENTORY pointing at the test's file."""
    full_env = {**os.environ, "OPS_INVENTORY": str(inv_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def reap(markers: list[str]) -> None:
    """SIGKILL every process whose command line contains one of the markers, until none is left
    (a supervisor may respawn its child between two kills)."""
    kill_until_none_left(
        lambda: {pid for m in markers for pid in processes_with(m)},
        10,
        message=f"processes matching {markers} to die",
    )


@pytest.fixture
def two_demo_hosts(sshd: SshServer, tmp_path: Path) -> Iterator[Path]:
    """An inventory with the demo on `viassh` (ssh opstest) and on `here` (local), each with its
    own free API port and state dir. Whatever the test does, nothing it started survives it."""
    ports = {"viassh": free_port(), "here": free_port()}
    hosts = demo_host("viassh", 'ssh = "opstest"', tmp_path / "ssh-state", ports["viassh"]) + demo_host(
        "here", "local = true", tmp_path / "local-state", ports["here"]
    )
    path = tmp_path / "hosts.toml"
    path.write_text(inventory_text(sshd.ssh_config_path, hosts))
    try:
        yield path
    finally:
        inv = inventory.load(path)
        on_hosts(inv, list(inv.hosts.values()), lambda s: control.stop(s))
        reap([str(tmp_path), *(f"api.py --port {p}" for p in ports.values())])


def by_host(status_json: dict) -> dict[str, dict]:
    return {h["host"]: h for h in status_json["hosts"]}


def summary(services: list[dict]) -> list[tuple]:
    """What must agree between transports (pids and uptimes differ, of course)."""
    return [
        (s["name"], s["state"], s["port_ok"], None if s["health"] is None else s["health"]["ok"])
        for s in services
    ]


def test_status_over_ssh_and_local_agree(two_demo_hosts):
    inv_path = two_demo_hosts

    before = run_inv(inv_path, "status", "--host", "viassh,here", "--json")
    assert before.returncode == 6, before.stderr  # all stopped (README: status exit codes)
    hosts = by_host(json.loads(before.stdout))
    assert summary(hosts["viassh"]["services"]) == summary(hosts["here"]["services"])
    assert {s["state"] for s in hosts["viassh"]["services"]} == {"stopped"}

    started = run_inv(inv_path, "start", "--host", "viassh,here")
    assert started.returncode == 0, started.stdout + started.stderr

    status = run_inv(inv_path, "status", "--host", "viassh,here", "--json")
    assert status.returncode == 0, status.stderr
    hosts = by_host(json.loads(status.stdout))
    assert [h["reachable"] for h in hosts.values()] == [True, True]
    expected = [("demo_daemon", "running", None, None), ("demo_api", "running", True, True)]
    expected.append(("demo_worker", "running", None, None))
    assert summary(hosts["viassh"]["services"]) == expected
    assert summary(hosts["here"]["services"]) == expected
    # Two hosts on one machine: each sees its own processes, never the other's.
    ssh_pids = {s["pid"] for s in hosts["viassh"]["services"]}
    local_pids = {s["pid"] for s in hosts["here"]["services"]}
    assert not ssh_pids & local_pids
    api = {h: next(s for s in hosts[h]["services"] if s["name"] == "demo_api") for h in hosts}
    assert api["viassh"]["supervised_by"] == "demo_daemon"
    assert api["viassh"]["port"] != api["here"]["port"]

    plain = run_inv(inv_path, "status", "--host", "all")
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout  # piped: no ANSI escapes
    lines = plain.stdout.splitlines()
    assert lines[0].split() == ["host", "service", "state", "pid", "uptime", "port", "health", "detail"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (h, s, "running") for h in ("viassh", "here") for s in ("demo_daemon", "demo_api", "demo_worker")
    ]
    assert sum("(own)" in line and " ok" in line for line in lines) == 2  # each host's API

    stopped = run_inv(inv_path, "stop", "--host", "all")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    after = json.loads(run_inv(inv_path, "status", "--host", "all", "--json").stdout)
    for h in after["hosts"]:
        assert {s["state"] for s in h["services"]} == {"stopped"}, h
    assert not any(pid_alive(p) for p in ssh_pids | local_pids)


def test_status_through_the_library_matches_over_both_transports(two_demo_hosts):
    inv = inventory.load(two_demo_hosts)
    hosts = [inv.host("viassh"), inv.host("here")]
    started = on_hosts(inv, hosts, lambda s: control.start(s))
    assert [(o.host, o.ok, o.value.ok) for o in started] == [("viassh", True, True), ("here", True, True)]
    outcomes = on_hosts(inv, hosts, lambda s: control.status(s))
    assert outcomes[0].ok and outcomes[1].ok
    assert summary(outcomes[0].value) == summary(outcomes[1].value)
    assert {s["state"] for s in outcomes[0].value} == {"running"}


# --- unreachable hosts ---------------------------------------------------------------------------

QUIET_SERVICE = """
[services.idle]
cmd = "sleep 1000"
"""


def test_an_unreachable_host_is_shown_with_the_reason_next_to_the_others(sshd, tmp_path):
    hosts = (
        f'[hosts.opstest]\nssh = "opstest"\npath = "{REPO}"\nstate_dir = "{tmp_path}/state"\n'
        'services = ["idle"]\n\n'
        '[hosts.opsdead]\nssh = "opsdead"\npath = "/srv"\nservices = ["idle"]\n'
    )
    inv_path = tmp_path / "hosts.toml"
    inv_path.write_text(inventory_text(sshd.ssh_config_path, hosts, QUIET_SERVICE))

    t = time.monotonic()
    r = run_inv(inv_path, "status", "--host", "all")
    took = time.monotonic() - t
    assert r.returncode == 3, r.stdout + r.stderr
    assert took < CONNECT_TIMEOUT + 2, f"took {took:.1f}s"
    assert "Traceback" not in r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows["opstest"].split()[1:3] == ["idle", "stopped"]
    assert rows["opsdead"].split()[2] == "unreachable"
    assert f"cannot connect to {sshd.user}@127.0.0.1:{sshd.dead_port}" in rows["opsdead"]
    assert "Unable to connect" in rows["opsdead"]

    r = run_inv(inv_path, "status", "--host", "all", "--json")
    assert r.returncode == 3
    hosts_json = by_host(json.loads(r.stdout))
    assert hosts_json["opstest"]["reachable"] is True
    assert hosts_json["opstest"]["services"][0]["state"] == "stopped"
    assert hosts_json["opsdead"]["reachable"] is False
    assert hosts_json["opsdead"]["error"].startswith("opsdead: cannot connect to")


# --- a host whose python is wrong ---------------------------------------------------------------


def test_a_wrong_python_on_the_host_is_an_agent_error_with_advice(sshd, tmp_path):
    hosts = (
        f'[hosts.badpy]\nssh = "opstest"\npath = "{REPO}"\nstate_dir = "{tmp_path}/state"\n'
        'python = "/nonexistent/python3"\nservices = ["idle"]\n'
    )
    inv_path = tmp_path / "hosts.toml"
    inv_path.write_text(inventory_text(sshd.ssh_config_path, hosts, QUIET_SERVICE))

    inv = inventory.load(inv_path)
    with pytest.raises(AgentError) as info, connect(inv, inv.host("badpy")):
        pass
    err = info.value
    assert err.message.startswith("badpy: the agent did not start (exit 127)")
    assert "/nonexistent/python3" in err.message  # the shell's "not found" names it
    assert "python = ..." in err.advice and "`/nonexistent/python3`" in err.advice
    assert err.exit_code == 3

    r = run_inv(inv_path, "status")
    assert r.returncode == 3
    assert "Traceback" not in r.stdout + r.stderr
    assert "badpy: the agent did not start" in r.stdout
