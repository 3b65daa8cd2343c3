"""A task opens its hosts' sessions as soon as it knows the hosts (ops/session.py open_early). When
it then fails on its own (an unknown service: exit 2), nothing it began on the host is left
running: the agent started early goes away with the connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import wait_until

REPO = Path(__file__).resolve().parents[2]


def agent_pids() -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"/ops-agent/agent-" in a and a.endswith(b".pyz") for a in argv):
            out.add(int(name))
    return out


def inv(sshd, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`inv ARGS` on one sshd host "box" running service "s" (never started here)."""
    path = tmp_path / "hosts.toml"
    path.write_text(f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n'
                    f'[hosts.box]\nssh = "opstest-early"\npath = "{tmp_path}"\n'
                    f'state_dir = "{tmp_path / "state"}"\nservices = ["s"]\n'
                    '[services.s]\ncmd = "sleep 1000"\n')
    env = {**os.environ, "OPS_INVENTORY": str(path), "OPS_NO_PERSIST": "1"}
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_usage_error_after_the_early_open_exits_2_and_leaves_no_agent(sshd, tmp_path: Path) -> None:
    before = agent_pids()
    for task in ("stop", "status"):
        r = inv(sshd, tmp_path, task, "--host", "box", "--service", "nosuch")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "nosuch" in r.stdout + r.stderr
    wait_until(lambda: not (agent_pids() - before), timeout=15,
               message="an agent started early outlived its command")


def test_the_same_command_with_a_known_service_runs_on_the_early_session(sshd, tmp_path: Path) -> None:
    r = inv(sshd, tmp_path, "status", "--host", "box", "--service", "s")
    assert r.returncode == 6, r.stdout + r.stderr  # stopped (README: exit codes of status)
    assert "stopped" in r.stdout
