"""Case 8 (issue 18): the on-host agent's CPU per status and per deploy's worth of lifecycle work
(bench/agent_cpu.py), for this tree and, side by side in the same run, for a baseline checkout of
the project given in OPS_BENCH_BASELINE_TREE (e.g. the commit before the change, checked out with
`git worktree add`). Without a baseline only this tree's numbers are printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import stats
from bench.rig import BENCH_DIR, REPO_ROOT, BenchError, Rig

NAME = "agentcpu"
TITLE = "the agent's own CPU per status and per stop+start+verify, local transport"
RUNS = 9


def _measure(rig: Rig, tree: str, tag: str, runs: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": tree, "OPS_CACHE_DIR": str(rig.dir("agentcpu", tag, "cache")),
           "XDG_CACHE_HOME": str(rig.dir("agentcpu", tag, "host-cache"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(rig.dir("pycache"))
    p = subprocess.run([sys.executable, str(BENCH_DIR / "agent_cpu.py"), str(rig.dir("agentcpu", tag, "w")),
                        str(runs)], env=env, capture_output=True, text=True, timeout=900, cwd=str(rig.tmp))
    if p.returncode != 0:
        raise BenchError(f"agent_cpu.py on {tree} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    baseline = os.environ.get("OPS_BENCH_BASELINE_TREE")
    mine = _measure(rig, str(REPO_ROOT), "this", runs)
    theirs = _measure(rig, baseline, "baseline", runs) if baseline else {}
    for op, samples in mine.items():
        if op in theirs:
            base = f"{op}: baseline ({baseline})"
            res.rows.append(stats.Row(base, theirs[op]))
            res.rows.append(stats.Row(f"{op}: this tree", samples, baseline=base))
            r = stats.median(samples) / stats.median(theirs[op])
            what = op.split(" (")[0]
            res.targets.append(stats.Target(f"agent CPU per {what} halved", f"{r:.2f}x", r <= 0.5))
        else:
            res.rows.append(stats.Row(f"{op}: this tree", samples))
    if not baseline:
        res.notes.append("no baseline: set OPS_BENCH_BASELINE_TREE to another checkout to compare")
    return res
