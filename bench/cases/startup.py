"""Case 6: start-up. `inv --list` in this project against `inv --list` of a trivial tasks.py
(`from invoke import task`, one task), and a whole `inv status --host local` (the demo running on
the `local` host: same agent, as a local subprocess). For reference: the interpreter alone and
`import invoke` (what any Invoke program pays)."""

from __future__ import annotations

import sys

from bench import stats
from bench.rig import DEMO_SERVICES, REPO_ROOT, BenchError, HostSpec, Rig, inv_binary
from tests.harness import free_port

NAME = "startup"
TITLE = "start-up: inv --list vs a trivial tasks.py; inv status --host local"
RUNS = 10
TRIVIAL = 'from invoke import task\n\n\n@task\ndef hello(c):\n    """Say hello."""\n    print("hello")\n'


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    from ops import control, inventory
    from ops.session import connect

    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    trivial = rig.dir("trivial")
    (trivial / "tasks.py").write_text(TRIVIAL)
    repo = rig.make_repo("startup-repo")
    spec = HostSpec(
        "local",
        "",
        repo,
        rig.dir("startup", "state"),
        ["demo_daemon", "demo_worker"],
        {"demo_api": free_port()},
    )
    inv_path = rig.write_inventory("startup", [spec], DEMO_SERVICES, ssh=False)
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts["local"]) as s:
        if not control.start(s).ok:
            raise BenchError("the demo did not start on the local host")
    env = rig.ops_env(inv_path)
    inv_exe = inv_binary()
    commands = {
        "inv --list, trivial tasks.py": ([inv_exe, "--list"], trivial),
        "inv --list, this project": ([inv_exe, "--list"], REPO_ROOT),
        "inv status --host local (demo running)": ([inv_exe, "status", "--host", "local"], REPO_ROOT),
        "python3 -c pass (the interpreter alone)": ([sys.executable, "-c", "pass"], trivial),
        "python3 -c 'import invoke'": ([sys.executable, "-c", "import invoke"], trivial),
    }
    samples: dict[str, list[float]] = {k: [] for k in commands}
    for label, warm in stats.alternation(list(commands), runs, warmup):
        argv, cwd = commands[label]
        took, _ = rig.timed(argv, cwd=cwd, env=env, timeout=60)
        if not warm:
            samples[label].append(took)
    base = "inv --list, trivial tasks.py"
    res.rows = [stats.Row(k, v, baseline=None if k == base else base) for k, v in samples.items()]
    r = stats.median(samples["inv --list, this project"]) / stats.median(samples[base])
    res.targets.append(stats.Target("inv --list <= 1.2x a trivial tasks.py", f"{r:.2f}x", r <= 1.2))
    return res
