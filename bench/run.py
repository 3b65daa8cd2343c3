#!/usr/bin/env python3
"""The benchmark's single entry point (issue 7).

    python bench/run.py [--runs N] [--case NAME ...] [--warmup K] [--write] [--keep]

Sets up its own loopback sshd (tests/harness.py) and scratch repos under a fresh temp dir, runs
each case after a warm-up with the compared commands alternated (A B A B ...), prints the median
and min–max of each and the ratio against the baseline as Markdown tables, and cleans up every
process it started (services, agents, sshd) even on Ctrl-C. ``--write`` puts the output into
bench/RESULTS.md between its markers; the analysis around them is written by hand.

Cases: deploy, phase, gate, restart, fanout, startup, warm, agentcpu (default: all, in that order).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stats  # noqa: E402
from bench.cases import agentcpu, deploy, fanout, gate, phase, restart, startup, warm  # noqa: E402
from bench.rig import BENCH_DIR, BenchError, Rig, machine  # noqa: E402

CASES = {m.NAME: m for m in (deploy, phase, gate, restart, fanout, startup, warm, agentcpu)}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def parse_cases(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for v in values or []:
        names.extend(x.strip() for x in v.split(",") if x.strip())
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"bench: unknown case {', '.join(unknown)}; cases: {', '.join(CASES)}")
    return names or list(CASES)


def report(cases: list[stats.CaseResult], info: dict[str, str], wall: float, argv: list[str]) -> str:
    lines = [
        f"Command: `python bench/run.py{' ' + ' '.join(argv) if argv else ''}` (total {wall:.0f} s)",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()),
        "",
        stats.results_table(cases),
        "",
        "Targets:",
        "",
        stats.targets_table(cases),
    ]
    notes = stats.notes_text(cases)
    if notes:
        lines += ["", "Notes:", "", notes]
    return "\n".join(lines)


def write_results(text: str, path: Path = BENCH_DIR / "RESULTS.md") -> None:
    old = path.read_text() if path.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old or END not in old:
        old += f"\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def _terminate(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="measured runs per case (default: each case's own)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds, not counted (default 1)")
    ap.add_argument("--case", action="append", help="run only these cases (repeatable, or comma list)")
    ap.add_argument("--write", action="store_true", help="put the output into bench/RESULTS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for a post-mortem")
    args = ap.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        ap.error("--runs must be at least 1")
    names = parse_cases(args.case)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` cleans up like Ctrl-C does
    results: list[stats.CaseResult] = []
    failed = False
    t0 = time.monotonic()
    try:
        with Rig(keep=args.keep) as rig:
            print(f"bench: temp dir {rig.tmp}", flush=True)
            for name in names:
                mod = CASES[name]
                print(f"== {name}: {mod.TITLE}", flush=True)
                t = time.monotonic()
                try:
                    res = mod.run(rig, args.runs, args.warmup)
                except BenchError as exc:
                    failed = True
                    res = stats.CaseResult(name, mod.TITLE, skipped=f"FAILED: {exc}".replace("\n", " "))
                    print(f"bench: case {name} failed:\n{exc}", file=sys.stderr, flush=True)
                results.append(res)
                print(stats.results_table([res]))
                if res.targets:
                    print(stats.targets_table([res]))
                print(f"({time.monotonic() - t:.0f} s)\n", flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    text = report(results, machine(), time.monotonic() - t0, argv)
    print("\n" + text)
    if args.write:
        write_results(text)
        print("\nbench: wrote bench/RESULTS.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
