"""Case 3: gate latency. How long after a service writes its ready line does the tool know?

The service (bench/services/ready_stamp.py) writes ``ready <time.time()>`` after a random 0-40 ms
(to sample every phase of the agent's 20 ms poll). The host runs on this machine, so the service's
clock is the client's clock. Per run, on one open SSH session: `start` (one agent call), then
- seen by the tool = the client's time.time() when the start call returns - the stamp: what a
  person waiting on `inv start` gets (the agent's poll + the result's trip back);
- seen by the agent = started_at (wall clock the agent recorded at the start, in the service's
  state file) + the log gate's `elapsed` - the stamp: the agent's poll alone.
Then `stop` (not timed).
"""

from __future__ import annotations

import json
import time

from bench import stats
from bench.rig import BenchError, HostSpec, Rig

NAME = "gate"
TITLE = "gate latency: service writes its ready line -> the tool sees it"
RUNS = 15

STAMP = """
[services.stamp]
cmd = "python3 bench_services/ready_stamp.py ${state_dir}"
ready.log = "^ready [0-9]"
ready.timeout = 10
stop_timeout = 3
"""


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    from ops import control, inventory
    from ops.session import connect

    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    repo = rig.make_repo("gate-repo", with_demo=False)  # the host's checkout is the repo itself
    state = rig.dir("gate", "state")
    inv_path = rig.write_inventory("gate", [HostSpec("box", "opstest-gate", repo, state, ["stamp"])], STAMP)
    inv = inventory.load(inv_path)
    host = inv.hosts["box"]
    log = state / "logs" / "stamp.log"
    seen_tool: list[float] = []
    seen_agent: list[float] = []
    with connect(inv, host) as s:
        for _, warm in stats.alternation(["start"], runs, warmup):
            offset = log.stat().st_size if log.exists() else 0
            r = control.start(s)
            t_seen = time.time()
            if not r.ok:
                raise BenchError(f"start failed: {r.services}")
            stamp = _stamp(log, offset)
            svc = r.services[0]
            gate = next(g for g in svc["gates"] if g["name"] == "log")
            started_at = json.loads((state / "services" / "stamp.json").read_text())["started_at"]
            control.stop(s)
            if not warm:
                seen_tool.append(t_seen - stamp)
                seen_agent.append(started_at + gate["elapsed"] - stamp)
    res.rows = [
        stats.Row("ready line -> `start` returns to the client (seen by the tool)", seen_tool),
        stats.Row("ready line -> the agent's log gate passes (seen by the agent)", seen_agent),
    ]
    m = stats.median(seen_tool)
    res.targets.append(stats.Target("gate latency median < 50 ms", stats.fmt_time(m), m < 0.050))
    return res


def _stamp(log, offset: int) -> float:
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode().splitlines():
            if line.startswith("ready "):
                return float(line.split()[1])
    raise BenchError(f"no ready line in {log} after offset {offset}")
