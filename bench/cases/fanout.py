"""Case 5: fan-out. `inv deploy --host all` to 1, 10 and 30 inventory hosts that share the
loopback sshd (each its own ssh alias, checkout, state dir and service), alternated round by round,
each round deploying a fresh commit.

Every host runs one tiny service (bench/services/tiny.sh: a shell and a sleep) so that 30 hosts on
this 2-core machine measure the tool's fan-out and not the CPU cost of 30 Python services. What
cannot be made small is each host's SSH session: the key exchange, and the remote user's shell
start-up (~/.bashrc) for the agent's one exec. The row "N x `ssh host true` in parallel" measures
exactly that for N hosts with the system ssh client: what this one machine needs to give N hosts
one exec each, the floor for any tool here.
"""

from __future__ import annotations

import subprocess
import time

from bench import stats
from bench.rig import HostSpec, Rig

NAME = "fanout"
TITLE = "fan-out: deploy to 1, 10, 30 hosts sharing the loopback sshd"
RUNS = 4
SIZES = (1, 10, 30)

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
        inventories[n] = rig.write_inventory(f"fanout{n}", hosts, TINY)

    def ssh_parallel(n: int) -> float:
        cfg = str(rig.sshd.ssh_config_path)
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
    what.update({f"{n} x `ssh host true` in parallel": ("ssh", n) for n in SIZES})
    labels = list(what)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    rnd = 0
    for label, warm in stats.alternation(labels, runs, warmup):
        kind, n = what[label]
        if label == labels[0]:
            rnd += 1
            rig.new_commit(repo, rnd)
        if kind == "inv":
            took = rig.inv(inventories[n], "deploy", "--host", "all", cwd=repo, timeout=300)
        else:
            took = ssh_parallel(n)
        if not warm:
            samples[label].append(took)

    one = labels[0]
    ssh_one = f"{SIZES[0]} x `ssh host true` in parallel"
    for label in labels:
        base = one if what[label][0] == "inv" else ssh_one
        res.rows.append(stats.Row(label, samples[label], baseline=None if label in (one, ssh_one) else base))
    m1 = stats.median(samples[one])
    for n, limit in ((10, 1.5), (30, 3.0)):
        r = stats.median(samples[f"inv deploy, {n} host(s)"]) / m1
        res.targets.append(stats.Target(f"{n} hosts <= {limit}x one host", f"{r:.2f}x", r <= limit))
    return res
