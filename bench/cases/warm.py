"""Case 7 (issue 18): cold and warm, side by side with the peers, on both remote shells.

One run, the same loopback sshd(s), the same demo deploy (bench/deploy_steps.sh's steps), commands
alternated round by round; every peer deploys to its own "host" (alias, checkout, state, port):

- deploy: the bash floor (one ssh, the baseline), `inv deploy` cold (`--no-persist`) and warm
  (`[ssh] persist = 60`, the holder already holding the host), Fabric with one `c.run` per step
  (bench/peers/fabric_deploy.py), Ansible (pipelining + ControlPersist) when it is installed;
- status: `inv status` cold and warm, and Fabric's one `c.run('true')` (bench/peers/fabric_run.py,
  the baseline: the least a Fabric status check costs), pyinfra's `exec -- true` when installed.

Both on the heavy-rc shell (this user's ~/.bashrc: pyenv init) and on the plain one (Rig.plain_sshd).
Besides wall time, each row's client CPU (this process's children: the command and what it runs
locally) and the machine's CPU (/proc/stat) per run are printed.

Peers are found, never installed into the project: Ansible in ~/.cache/ops-bench/ansible-venv
(bench case 1 installs it there) or OPS_BENCH_PEERS_VENV, pyinfra in OPS_BENCH_PEERS_VENV.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

from bench import stats
from bench.cases.deploy import DEMO, _ansible, _stop_by_pidfiles, health_commit
from bench.rig import BENCH_DIR, DEMO_SERVICES, REPO_ROOT, BenchError, HostSpec, Rig, cpu_seconds, inv_binary
from tests.harness import free_port

NAME = "warm"
TITLE = "cold and warm deploy and status against Fabric, pyinfra, Ansible and the bash floor, both shells"
RUNS = 7
PERSIST = 60


def _venv_tool(name: str) -> str | None:
    for venv in (os.environ.get("OPS_BENCH_PEERS_VENV"), "~/.cache/ops-bench/ansible-venv"):
        if venv:
            exe = Path(venv).expanduser() / "bin" / name
            if exe.exists():
                return str(exe)
    return None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    repo = rig.make_repo("warm-repo")
    runtime = rig.dir("rt")
    runtime.chmod(0o700)
    commands: dict[str, object] = {}
    checks: dict[str, int] = {}
    base_of: dict[str, str | None] = {}
    status_base: dict[str, str] = {}
    rnd_commit = {"commit": ""}

    def envs(inv: Path, persist: bool) -> dict[str, str]:
        env = {**rig.ops_env(inv), "XDG_RUNTIME_DIR": str(runtime)}
        if not persist:
            env["OPS_NO_PERSIST"] = "1"
        return env

    def timed_inv(inv: Path, persist: bool, *args: str):
        def go() -> float:
            took, _ = rig.timed([inv_binary(), "--search-root", str(REPO_ROOT), *args], cwd=repo,
                                env=envs(inv, persist), timeout=180)
            return took
        return go

    for shell in ("rc", "plain"):
        server = rig.plain_sshd if shell == "plain" else rig.sshd
        cfg = str(server.ssh_config_path)
        tag = "heavy-rc shell" if shell == "rc" else "plain shell"
        base = rig.dir("warm", shell)
        ports = {k: free_port() for k in ("cold", "warm", "floor", "fabric", "ansible")}

        def inventory(kind: str, persist: bool, shell=shell, base=base, ports=ports) -> Path:
            h = HostSpec("box", f"opstest-w{shell}{kind}", base / kind / "co", base / kind / "state", DEMO,
                         {"demo_api": ports[kind]})
            path = rig.write_inventory(f"warm-{shell}-{kind}", [h], DEMO_SERVICES, plain=shell == "plain")
            if persist:
                path.write_text(path.read_text().replace("[ssh]\n", f"[ssh]\npersist = {PERSIST}\n", 1))
            return path

        cold_inv, warm_inv = inventory("cold", False), inventory("warm", True)
        floor = f"{tag}: bash floor.sh, one ssh (floor)"
        state_floor = rig.dir("warm", shell, "floor", "state")
        floor_argv = ["bash", str(BENCH_DIR / "floor.sh"), cfg, f"opstest-w{shell}floor", str(repo),
                      str(base / "floor" / "co"), str(state_floor), str(ports["floor"])]
        rig.on_cleanup("stop the floor's services", lambda s=state_floor: _stop_by_pidfiles(s))
        commands[floor] = lambda a=floor_argv: rig.timed(a, timeout=120)[0]
        checks[floor], base_of[floor] = ports["floor"], None

        label = f"{tag}: inv deploy, cold (--no-persist)"
        commands[label] = timed_inv(cold_inv, False, "deploy", "--host", "box")
        checks[label], base_of[label] = ports["cold"], floor
        label = f"{tag}: inv deploy, warm ([ssh] persist)"
        commands[label] = timed_inv(warm_inv, True, "deploy", "--host", "box")
        checks[label], base_of[label] = ports["warm"], floor

        state_fab = rig.dir("warm", shell, "fabric", "state")
        fab_argv = [sys.executable, str(BENCH_DIR / "peers" / "fabric_deploy.py"), cfg,
                    f"opstest-w{shell}fab", str(repo), str(base / "fabric" / "co"), str(state_fab),
                    str(ports["fabric"])]
        rig.on_cleanup("stop Fabric's services", lambda s=state_fab: _stop_by_pidfiles(s))
        label = f"{tag}: Fabric, one c.run per step"
        commands[label] = lambda a=fab_argv: rig.timed(a, timeout=120)[0]
        checks[label], base_of[label] = ports["fabric"], floor

        playbook = _venv_tool("ansible-playbook")
        if playbook and shell == "rc":  # its ssh config and ControlPersist master: the rc sshd
            label = f"{tag}: ansible-playbook, pipelining + ControlPersist"
            rig.dir("warm", shell, "ansible")
            commands[label] = _ansible(rig, playbook, repo, base, ports["ansible"])
            checks[label], base_of[label] = ports["ansible"], floor
        elif not playbook and shell == "rc":
            res.notes.append("Ansible skipped: no ansible-playbook (run case deploy once, or set "
                             "OPS_BENCH_PEERS_VENV)")

        fab_run = f"{tag}: status: Fabric, one c.run('true') (status baseline)"
        fab_run_argv = [sys.executable, str(BENCH_DIR / "peers" / "fabric_run.py"), cfg,
                        f"opstest-w{shell}fab"]
        commands[fab_run] = lambda a=fab_run_argv: rig.timed(a, timeout=60)[0]
        base_of[fab_run] = None
        for kind, inv, persist in (("cold (--no-persist)", cold_inv, False), ("warm", warm_inv, True)):
            label = f"{tag}: status: inv status, {kind}"
            commands[label] = timed_inv(inv, persist, "status", "--host", "box", "--no-health")
            base_of[label] = fab_run
            status_base[label] = fab_run
        pyinfra = _venv_tool("pyinfra")
        if pyinfra:
            label = f"{tag}: status: pyinfra exec -- true"
            inv_py = base / "pyinfra_inventory.py"
            inv_py.write_text(f"hosts = [('opstest-w{shell}fab', {{'ssh_config_file': {cfg!r}}})]\n")
            commands[label] = lambda p=pyinfra, i=inv_py, b=base: rig.timed(
                [p, "-y", str(i), "exec", "--", "true"], cwd=str(b), timeout=120)[0]
            base_of[label] = fab_run
        elif shell == "rc":
            res.notes.append("pyinfra skipped: set OPS_BENCH_PEERS_VENV to a venv with pyinfra installed")

    def disconnect() -> None:
        import subprocess

        subprocess.run([inv_binary(), "--search-root", str(REPO_ROOT), "disconnect"],
                       env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, timeout=60)

    rig.on_cleanup("close the held connections", disconnect)

    labels = list(commands)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    client: dict[str, list[float]] = {k: [] for k in labels}
    machine: dict[str, list[float]] = {k: [] for k in labels}
    rnd = 0
    for label, warm in stats.alternation(labels, runs, max(1, warmup)):
        if label == labels[0]:
            rnd += 1
            rnd_commit["commit"] = rig.new_commit(repo, rnd)
        c0, m0 = _children_cpu(), cpu_seconds()
        took = commands[label]()  # type: ignore[operator]
        c1, m1 = _children_cpu(), cpu_seconds()
        if label in checks:
            got = health_commit(checks[label])
            if got != rnd_commit["commit"]:
                raise BenchError(f"{label}: after the deploy the API runs {got[:12]}, not the new commit")
        if not warm:
            samples[label].append(took)
            client[label].append(c1 - c0)
            machine[label].append(m1 - m0)

    res.rows = [stats.Row(k, v, baseline=base_of.get(k)) for k, v in samples.items()]
    for k in labels:
        res.notes.append(f"{k}: client CPU {stats.median(client[k]) * 1000:.0f} ms, machine CPU "
                         f"{stats.median(machine[k]) * 1000:.0f} ms per run")
    for tag in ("heavy-rc shell", "plain shell"):
        fl = stats.median(samples[f"{tag}: bash floor.sh, one ssh (floor)"])
        cold = stats.median(samples[f"{tag}: inv deploy, cold (--no-persist)"]) / fl
        warm_r = stats.median(samples[f"{tag}: inv deploy, warm ([ssh] persist)"]) / fl
        T = stats.Target
        res.targets.append(T(f"{tag}: cold deploy <= 1.1x the floor", f"{cold:.2f}x", cold <= 1.1))
        res.targets.append(T(f"{tag}: warm deploy < 1.0x the floor", f"{warm_r:.2f}x", warm_r < 1.0))
        ws = stats.median(samples[f"{tag}: status: inv status, warm"])
        res.targets.append(T(f"{tag}: warm inv status < 150 ms", f"{ws * 1000:.0f} ms", ws < 0.150))
        cs = stats.median(samples[f"{tag}: status: inv status, cold (--no-persist)"])
        fr = stats.median(samples[f"{tag}: status: Fabric, one c.run('true') (status baseline)"])
        res.targets.append(stats.Target(f"{tag}: cold inv status <= Fabric's one c.run", f"{cs / fr:.2f}x",
                                        cs <= fr))
        ans = f"{tag}: ansible-playbook, pipelining + ControlPersist"
        if ans in samples:
            for kind, label in (("cold", f"{tag}: inv deploy, cold (--no-persist)"),
                                ("warm", f"{tag}: inv deploy, warm ([ssh] persist)")):
                a = stats.median(samples[ans]) / stats.median(samples[label])
                res.targets.append(stats.Target(f"{tag}: >= 10x faster than Ansible ({kind})", f"{a:.1f}x",
                                                a >= 10))
            f = stats.median(samples[ans]) / fl
            res.notes.append(f"{tag}: the bash floor itself is {f:.1f}x faster than Ansible")
    return res
