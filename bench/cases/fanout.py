"""Case 5: fan-out. `inv deploy --host all` and `inv status --host all` to 1, 10, 30 and 60
inventory hosts that share the
loopback sshd (each its own ssh alias, checkout, state dir and service), alternated round by round,
each round deploying a fresh commit.

All N "hosts" are this one 2-core machine, so everything each host does on its own CPU in real
life (sshd, the agent, git, the service) is paid N times on the same two cores here. To keep the
machine from being the bottleneck as far as it can be: every host runs one tiny service
(bench/services/tiny.sh: a shell and a sleep) rather than Python services, and the hosts use a
second sshd whose sessions skip ~/.bashrc (Rig.plain_sshd: root's ~/.bashrc here runs `pyenv init`,
~0.1 s of CPU per session). What cannot be made small is each host's SSH session (key exchange,
auth, a shell, the agent's interpreter) and its git work. Two kinds of rows show how much of the
wall time is the machine: "N x `ssh host true` in parallel" (the bare minimum of one exec per host
with the system ssh client: no tool can do less here), and the CPU time the whole machine spent
during each run (/proc/stat), against the wall time and the number of cores.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

from bench import stats
from bench.rig import REPO_ROOT, HostSpec, Rig, cpu_seconds

NAME = "fanout"
TITLE = "fan-out: deploy and status to 1, 10, 30, 60 hosts sharing the loopback sshd"
RUNS = 4
SIZES = (1, 10, 30, 60)
# exactly what the `inv` script runs
INV = [sys.executable, "-m", "invoke"]

TINY = """
[services.tiny]
cmd = "sh bench_services/tiny.sh ${state_dir}"
ready.log = "tiny ready"
ready.timeout = 20
stop_timeout = 3
"""


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    repo = rig.make_repo("fanout-repo", with_demo=False)
    inventories = {}
    for n in SIZES:
        hosts = [
            HostSpec(
                f"h{i:02d}",
                f"opstest-f{n}-{i:02d}",
                rig.tmp / "fan" / f"n{n}" / f"h{i:02d}" / "co",
                rig.tmp / "fan" / f"n{n}" / f"h{i:02d}" / "state",
                ["tiny"],
            )
            for i in range(n)
        ]
        inventories[n] = rig.write_inventory(f"fanout{n}", hosts, TINY, plain=True)

    def ssh_parallel(n: int) -> float:
        cfg = str(rig.plain_sshd.ssh_config_path)
        t = time.perf_counter()
        procs = [
            subprocess.Popen(
                ["ssh", "-F", cfg, "-o", "BatchMode=yes", f"opstest-p{i}", "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(n)
        ]
        codes = [p.wait(60) for p in procs]
        if any(codes):
            raise RuntimeError(f"ssh true failed: {codes}")
        return time.perf_counter() - t

    what = {f"inv deploy, {n} host(s)": ("inv", n) for n in SIZES}
    what.update({f"inv status, {n} host(s)": ("status", n) for n in SIZES})
    what.update({f"{n} x `ssh host true` in parallel": ("ssh", n) for n in SIZES})
    labels = list(what)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    client: dict[str, list[float]] = {k: [] for k in labels}

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    rnd = 0
    for label, warm in stats.alternation(labels, runs, warmup):
        kind, n = what[label]
        if label == labels[0]:
            rnd += 1
            rig.new_commit(repo, rnd)
        c0, k0 = cpu_seconds(), children_cpu()
        if kind in ("inv", "status"):
            task = ["deploy", "--host", "all"]
            if kind == "status":
                task = ["status", "--host", "all", "--no-health"]
            took, _ = rig.timed(
                INV + ["--search-root", str(REPO_ROOT), *task],
                cwd=repo,
                env=rig.ops_env(inventories[n]),
                timeout=300,
            )
        else:
            took = ssh_parallel(n)
        if not warm:
            samples[label].append(took)
            cpu[label].append(cpu_seconds() - c0)
            client[label].append(children_cpu() - k0)

    one = labels[0]
    ssh_one = f"{SIZES[0]} x `ssh host true` in parallel"
    status_one = f"inv status, {SIZES[0]} host(s)"
    firsts = {"inv": one, "status": status_one, "ssh": ssh_one}
    for label in labels:
        base = firsts[what[label][0]]
        res.rows.append(stats.Row(label, samples[label], baseline=None if label == base else base))
    cores = os.cpu_count() or 1
    for label in labels:
        res.rows.append(stats.Row(f"CPU time the machine spent during: {label}", cpu[label]))
        wall, busy = stats.median(samples[label]), stats.median(cpu[label])
        res.notes.append(
            f"{label}: {busy:.2f} CPU-s in {wall:.2f} s = {busy / wall / cores:.0%} of {cores} cores busy"
            + f"; per host: {busy / what[label][1] * 1000:.0f} ms of machine CPU, "
            f"{stats.median(client[label]) / what[label][1] * 1000:.0f} ms of it the client's"
        )
    for n in SIZES:
        t, f = (
            stats.median(samples[f"inv deploy, {n} host(s)"]),
            stats.median(samples[f"{n} x `ssh host true` in parallel"]),
        )
        res.notes.append(f"{n} host(s): inv deploy takes {t / f:.2f}x the bare `ssh host true` fan-out")
    m1 = stats.median(samples[one])
    for n in SIZES[1:]:
        r = stats.median(samples[f"inv status, {n} host(s)"]) / stats.median(samples[status_one])
        res.notes.append(f"inv status to {n} hosts takes {r:.2f}x one host")
    for n, limit in ((10, 1.5), (30, 3.0)):
        r = stats.median(samples[f"inv deploy, {n} host(s)"]) / m1
        res.targets.append(stats.Target(f"{n} hosts <= {limit}x one host", f"{r:.2f}x", r <= limit))
    return res
