#!/usr/bin/env python3
"""Where the CPU of a fan-out deploy goes (a diagnostic for bench case 5; not part of run.py).

    python bench/profile_fanout.py [--hosts 30] [--rounds 2]

Deploys the fan-out case's tiny service to N hosts on the plain-shell loopback sshd, with each
host's agent started through a wrapper interpreter (`python = ...` in hosts.toml) that records the
agent's CPU time (its own, and its waited-for children's: git) and, in a second pass, a cProfile
of it (CPU time, not wall). The client's CPU is `inv`'s (with its children: local git) from
getrusage; --py-spy samples it. What is left of the machine's busy time (/proc/stat) is sshd, the
remote shells, the services and anything else running on the machine at the time.
"""

from __future__ import annotations

import argparse
import json
import pstats
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cases.fanout import INV, TINY  # noqa: E402
from bench.rig import REPO_ROOT, HostSpec, Rig, cpu_seconds  # noqa: E402

WRAPPER = """#!{python}
import cProfile, json, os, resource, runpy, sys, time
OUT = {out!r}
PROFILE = {profile!r}
sys.argv = sys.argv[1:]
prof = cProfile.Profile(time.process_time) if PROFILE else None  # CPU, not wall
try:
    if prof:
        prof.enable()
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
finally:
    if prof:
        prof.disable()
        prof.dump_stats(os.path.join(OUT, "%d.prof" % os.getpid()))
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(OUT, "%d.json" % os.getpid()), "w") as f:
        json.dump({{"agent": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime}}, f)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--py-spy", help="a py-spy binary: sample the client (`inv`, all threads) in the plain pass"
    )
    args = ap.parse_args()
    with Rig() as rig:
        repo = rig.make_repo("repo", with_demo=False)
        out = {}
        wrappers = {}
        for profile in (False, True):
            out[profile] = rig.dir("prof" if profile else "cpu")
            w = rig.tmp / ("agent-prof.py" if profile else "agent-cpu.py")
            w.write_text(WRAPPER.format(python="/usr/bin/python3", out=str(out[profile]), profile=profile))
            w.chmod(0o755)
            wrappers[profile] = w
        for profile in (False, True):
            hosts = [
                HostSpec(
                    f"h{i:02d}",
                    f"opstest-h{i:02d}",
                    rig.tmp / "h" / f"{i:02d}" / "co",
                    rig.tmp / "h" / f"{i:02d}" / "state",
                    ["tiny"],
                    python=str(wrappers[profile]),
                )
                for i in range(args.hosts)
            ]
            inv = rig.write_inventory(f"inv{int(profile)}", hosts, TINY, plain=True)
            for r in range(args.rounds + 1):  # round 0: first deploy (creates the checkouts), not counted
                rig.new_commit(repo, 100 * int(profile) + r)
                for f in out[profile].iterdir():
                    f.unlink()
                c0, k0, t0 = cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                spy = rig.tmp / "client.txt"
                pre = [args.py_spy, "record", "-r", "250", "-f", "raw", "-o", str(spy), "--"]
                sampled = bool(args.py_spy) and not profile and r == args.rounds
                argv = INV + ["--search-root", str(REPO_ROOT), "deploy", "--host", "all"]
                rig.timed((pre if sampled else []) + argv, cwd=repo, env=rig.ops_env(inv), timeout=300)
                if sampled:
                    _summarize_spy(spy)
                wall, machine = time.perf_counter() - t0, cpu_seconds() - c0
                k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                client = (k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime)
                runs = [json.loads(p.read_text()) for p in out[profile].glob("*.json")]
                agent = sum(x["agent"] for x in runs)
                git = sum(x["children"] for x in runs)
                if r == 0:
                    continue
                n = args.hosts
                print(
                    f"{'cProfile' if profile else 'plain'} round {r}: {n} hosts, wall {wall:.2f} s, "
                    f"machine busy {machine:.2f} CPU-s; client (inv + local git) {client:.2f}; agents "
                    f"{agent:.2f} ({agent / n * 1000:.0f} ms each, {len(runs)} agent runs); their "
                    f"children (git...) {git:.2f} ({git / n * 1000:.0f} ms each); the rest (sshd, "
                    f"shells, services, others) {machine - client - agent - git:.2f}"
                )
                if profile and r == args.rounds:
                    st = pstats.Stats(*[str(p) for p in out[profile].glob("*.prof")])
                    st.sort_stats("tottime").print_stats(18)
                    st.sort_stats("cumulative").print_stats(30)
    return 0


def _summarize_spy(path: Path, top: int = 25) -> None:
    """py-spy's collapsed stacks -> the share of CPU samples under each function (inclusive)."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " " + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                inclusive[name] = inclusive.get(name, 0) + n
    print(f"client CPU samples (all threads, 250/s): {total}")
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {n / total:6.1%}  {name}")


if __name__ == "__main__":
    sys.exit(main())
