"""Case 1: deploy the demo (daemon + its supervised API child + worker) to an SSH host.

Compared, alternated round by round, each on its own "host" (checkout, state dir, API port) of
the same loopback sshd, all deploying the same fresh commit of one scratch repository:
- `inv deploy --host tool`, run as a person runs it (a new process, from the project directory);
- bench/floor.sh: the same steps in bash over ONE ssh connection (the floor);
- bench/ansible/deploy.yml: the same steps as an Ansible playbook (ansible-core in its own venv
  under ~/.cache/ops-bench, never a dependency of the project; skipped if it cannot be installed).
After every deploy (outside the timing) the API's /health must report the new commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from bench import stats
from bench.rig import BENCH_DIR, DEMO_SERVICES, BenchError, HostSpec, Rig
from tests.harness import free_port

NAME = "deploy"
TITLE = "deploy the demo (3 services, one supervised child) to an SSH host"
RUNS = 7
ANSIBLE_VENV = Path(os.environ.get("OPS_BENCH_CACHE", "~/.cache/ops-bench")).expanduser() / "ansible-venv"
DEMO = ["demo_daemon", "demo_worker"]
TOOL = "inv deploy (ops)"
FLOOR = "bash floor.sh, one ssh connection (floor)"
FLOOR_KEX = "floor.sh, ssh forced to curve25519 (paramiko's key exchange)"
TOOL_PLAIN = "plain remote shell: inv deploy (ops)"
FLOOR_PLAIN = "plain remote shell: floor.sh"


def ansible_playbook() -> tuple[str | None, str]:
    """(path to ansible-playbook, '') or (None, why not). Installs ansible-core into a separate
    venv on first use; PyPI must be reachable then."""
    exe = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if exe.exists():
        return str(exe), ""
    print(f"bench: installing ansible-core into {ANSIBLE_VENV} (once)", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True, capture_output=True, timeout=300
        )
        subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return None, f"installing ansible-core failed: {exc} {err.decode(errors='replace')[-300:]}".strip()
    return (str(exe), "") if exe.exists() else (None, "ansible-playbook missing after pip install")


def health_commit(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
        return json.loads(resp.read())["commit"]


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    repo = rig.make_repo("deploy-repo")
    base = rig.dir("deploy")
    ports = {k: free_port() for k in ("tool", "floor", "kex", "ansible", "tool-plain", "floor-plain")}

    tool_host = HostSpec(
        "tool",
        "opstest-tool",
        base / "tool" / "checkout",
        base / "tool" / "state",
        DEMO,
        {"demo_api": ports["tool"]},
    )
    inv_path = rig.write_inventory("deploy", [tool_host], DEMO_SERVICES)

    floor_dirs = (base / "floor" / "checkout", rig.dir("deploy", "floor", "state"))
    rig.dir("deploy", "floor", "state-kex")
    floor_argv = [
        "bash",
        str(BENCH_DIR / "floor.sh"),
        str(rig.sshd.ssh_config_path),
        "opstest-floor",
        str(repo),
        str(floor_dirs[0]),
        str(floor_dirs[1]),
        str(ports["floor"]),
    ]
    rig.on_cleanup("stop the floor's services", lambda: _stop_by_pidfiles(floor_dirs[1]))

    kex = {**os.environ, "FLOOR_SSH_OPTS": "-o KexAlgorithms=curve25519-sha256"}
    floor_kex = floor_argv[:-3] + [
        str(floor_dirs[0]) + "-kex",
        str(floor_dirs[1]) + "-kex",
        str(ports["kex"]),
    ]
    rig.on_cleanup("stop the floor's services", lambda: _stop_by_pidfiles(Path(str(floor_dirs[1]) + "-kex")))
    commands = {
        TOOL: lambda: rig.inv(inv_path, "deploy", "--host", "tool", cwd=repo),
        FLOOR: lambda: rig.timed(floor_argv, timeout=120)[0],
        FLOOR_KEX: lambda: rig.timed(floor_kex, env=kex, timeout=120)[0],
    }
    checks = {TOOL: ports["tool"], FLOOR: ports["floor"], FLOOR_KEX: ports["kex"]}

    # The same two on a host whose remote shell is plain (no ~/.bashrc, so no pyenv shim either):
    # the fixed costs of each way, without this machine's heavy shell start-up.
    plain_host = HostSpec(
        "tool",
        "opstest-tool",
        base / "plain" / "checkout",
        base / "plain" / "state",
        DEMO,
        {"demo_api": ports["tool-plain"]},
    )
    plain_inv = rig.write_inventory("deploy-plain", [plain_host], DEMO_SERVICES, plain=True)
    plain_floor = [
        "bash",
        str(BENCH_DIR / "floor.sh"),
        str(rig.plain_sshd.ssh_config_path),
        "opstest-floor",
        str(repo),
        str(base / "plain" / "floor-co"),
        str(rig.dir("deploy", "plain", "floor-state")),
        str(ports["floor-plain"]),
    ]
    rig.on_cleanup("stop the floor's services", lambda: _stop_by_pidfiles(base / "plain" / "floor-state"))
    commands[TOOL_PLAIN] = lambda: rig.inv(plain_inv, "deploy", "--host", "tool", cwd=repo)
    commands[FLOOR_PLAIN] = lambda: rig.timed(plain_floor, timeout=120)[0]
    checks[TOOL_PLAIN], checks[FLOOR_PLAIN] = ports["tool-plain"], ports["floor-plain"]

    playbook, why = ansible_playbook()
    if playbook:
        ans = _ansible(rig, playbook, repo, base, ports["ansible"])
        commands["ansible-playbook, pipelining + ControlPersist"] = ans
        checks["ansible-playbook, pipelining + ControlPersist"] = ports["ansible"]
    else:
        res.notes.append(f"Ansible skipped: {why}")

    samples: dict[str, list[float]] = {k: [] for k in commands}
    rnd = 0
    for label, warm in stats.alternation(list(commands), runs, warmup):
        if label == next(iter(commands)):  # a new round: a new commit for all of them
            rnd += 1
            commit = rig.new_commit(repo, rnd)
        took = commands[label]()
        got = health_commit(checks[label])
        if got != commit:
            raise BenchError(f"{label}: after the deploy the API runs {got[:12]}, not {commit[:12]}")
        if not warm:
            samples[label].append(took)

    floor, tool = FLOOR, TOOL
    base_of = {FLOOR: None, TOOL_PLAIN: FLOOR_PLAIN, FLOOR_PLAIN: None}
    res.rows = [stats.Row(k, v, baseline=base_of.get(k, floor)) for k, v in samples.items()]
    r = stats.median(samples[tool]) / stats.median(samples[floor])
    res.targets.append(stats.Target("ops / floor <= 1.3", f"{r:.2f}x", r <= 1.3))
    rp = stats.median(samples[TOOL_PLAIN]) / stats.median(samples[FLOOR_PLAIN])
    res.targets.append(stats.Target("ops / floor <= 1.3, plain remote shell", f"{rp:.2f}x", rp <= 1.3))
    if playbook:
        ansible = "ansible-playbook, pipelining + ControlPersist"
        a = stats.median(samples[ansible]) / stats.median(samples[tool])
        res.targets.append(stats.Target("ops at least 5x faster than Ansible", f"{a:.1f}x faster", a >= 5))
    else:
        res.targets.append(stats.Target("ops at least 5x faster than Ansible", f"skipped: {why}", None))
    return res


def _ansible(rig: Rig, playbook: str, repo: Path, base: Path, port: int):
    state = rig.dir("deploy", "ansible", "state")
    checkout = base / "ansible" / "checkout"
    inventory = base / "ansible" / "inventory.ini"
    inventory.write_text("[bench]\nbox ansible_host=opstest-ansible\n")
    cp = rig.dir("acp")  # short: control socket paths must fit in 108 bytes
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(BENCH_DIR / "ansible" / "ansible.cfg"),
        "ANSIBLE_SSH_ARGS": f"-F {rig.sshd.ssh_config_path} -o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp),
        "ANSIBLE_HOME": str(rig.dir("ansible-home")),
        "ANSIBLE_LOCAL_TEMP": str(rig.dir("ansible-home", "tmp")),
        "ANSIBLE_REMOTE_TEMP": str(rig.dir("ansible-remote")),
    }
    argv = [
        playbook,
        "-i",
        str(inventory),
        str(BENCH_DIR / "ansible" / "deploy.yml"),
        "-e",
        f"repo={repo}",
        "-e",
        f"checkout={checkout}",
        "-e",
        f"state={state}",
        "-e",
        f"port={port}",
    ]
    rig.on_cleanup("stop Ansible's services", lambda: _stop_by_pidfiles(state))
    rig.on_cleanup("close Ansible's ssh master", lambda: _close_masters(rig, cp))
    return lambda: rig.timed(argv, env=env, timeout=180)[0]


def _stop_by_pidfiles(state: Path) -> None:
    """What the floor/Ansible started: TERM the process groups recorded in STATE/*.pid."""
    import signal

    from tests.harness import killpg_quietly, pid_alive, wait_until

    pids = []
    for f in state.glob("*.pid"):
        try:
            pids.append(int(f.read_text().strip()))
        except ValueError:
            continue
    for p in pids:
        killpg_quietly(p, signal.SIGTERM)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5)
    except TimeoutError:
        for p in pids:
            killpg_quietly(p, signal.SIGKILL)


def _close_masters(rig: Rig, cp: Path) -> None:
    for sock in cp.iterdir():
        subprocess.run(
            [
                "ssh",
                "-F",
                str(rig.sshd.ssh_config_path),
                "-o",
                f"ControlPath={sock}",
                "-O",
                "exit",
                "opstest-ansible",
            ],
            capture_output=True,
            timeout=10,
        )
