"""The agent's own CPU per operation, on the built-in local transport (the same agent code as over
SSH, without sshd's share): run by bench case `agentcpu` with PYTHONPATH set to the tree to measure.

    PYTHONPATH=TREE python bench/agent_cpu.py WORKDIR RUNS   -> one JSON line: {op: [cpu seconds]}

The agents are this process's children: RUSAGE_CHILDREN grows by their CPU (and that of what they
wait for: the two services are `sh` + `sleep`, a few ms) once each agent has exited.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main() -> int:
    root, runs = Path(sys.argv[1]), int(sys.argv[2])
    root.mkdir(parents=True, exist_ok=True)
    (root / "svc.sh").write_text("echo ready\nexec sleep 1000\n")
    (root / "hosts.toml").write_text(f"""
[hosts.local]
local = true
path = "{root}"
state_dir = "{root}/state"
services = ["a", "b"]
[services.a]
cmd = "sh {root}/svc.sh a"
log = "{root}/state/a.log"
ready.log = "ready"
[services.b]
cmd = "sh {root}/svc.sh b"
log = "{root}/state/b.log"
ready.log = "ready"
after = ["a"]
checks = ["orphans"]
""")
    from ops import control, inventory, session, verify

    inv = inventory.load(str(root / "hosts.toml"))
    host = inv.host("local")

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def one(fn) -> float:
        c = cpu()
        s = session.HostSession(inv, host)
        s.open()
        try:
            fn(s)
        finally:
            s.close()
        return cpu() - c

    out: dict[str, list[float]] = {"status": [], "stop + start + verify (a deploy's agent work)": []}
    for _ in range(runs + 1):  # the first round warms caches (the zipapp, the interpreter's files)
        out["status"].append(one(lambda s: control.status(s, [], health=True)))
        out["stop + start + verify (a deploy's agent work)"].append(one(
            lambda s: (control.stop(s, []), control.start(s, []), verify.verify_all(s, lambda e: None))))
    one(lambda s: control.stop(s, []))
    print(json.dumps({k: v[1:] for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
