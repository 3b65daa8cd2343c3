"""Case 2: per-phase overhead. The agent's no-op phase (`ping`) 1 vs 21 times on one SSH host,
against fabric's `c.run("true")` 1 vs 21 times, plus a breakdown of where fabric's time goes.

A/B rows are whole sessions (connect, N phases, close), so connection and start-up costs cancel
out in the paired difference (21 - 1) / 20 = the cost of one more phase.
"""

from __future__ import annotations

import socket
import subprocess
import time

from bench import stats
from bench.rig import HostSpec, Rig

NAME = "phase"
TITLE = "per-phase overhead (no-op phase 1 vs 21 times, one SSH host)"
RUNS = 6
BURST = 5  # commands per round for the per-command breakdown

TINY = """
[services.tiny]
cmd = "sh bench_services/tiny.sh ${state_dir}"
ready.log = "tiny ready"
"""


def _fabric_connection(rig: Rig, nodelay: bool):
    from fabric import Config, Connection

    c = Connection("opstest", config=Config(runtime_ssh_path=str(rig.sshd.ssh_config_path)))
    c.open()
    if nodelay:
        c.transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def run(rig: Rig, runs: int | None, warmup: int) -> stats.CaseResult:
    from ops import inventory
    from ops.session import connect

    runs = runs or RUNS
    res = stats.CaseResult(NAME, TITLE)
    inv_path = rig.write_inventory(
        "phase",
        [HostSpec("box", "opstest", rig.dir("phase", "box"), rig.dir("phase", "box-state"), ["tiny"])],
        TINY,
    )
    inv = inventory.load(inv_path)
    host = inv.hosts["box"]

    def agent(n: int) -> float:
        t = time.perf_counter()
        with connect(inv, host) as s:
            for _ in range(n):
                s.call("ping")
        return time.perf_counter() - t

    def fab(n: int) -> float:
        t = time.perf_counter()
        c = _fabric_connection(rig, nodelay=False)
        try:
            for _ in range(n):
                c.run("true", hide=True)
        finally:
            c.close()
        return time.perf_counter() - t

    whole = {
        "agent x1": lambda: agent(1),
        "agent x21": lambda: agent(21),
        "fabric x1": lambda: fab(1),
        "fabric x21": lambda: fab(21),
    }
    samples: dict[str, list[float]] = {k: [] for k in whole}
    for label, warm in stats.alternation(list(whole), runs, warmup):
        took = whole[label]()
        if not warm:
            samples[label].append(took)

    # Per command on an already open connection, to take fabric's ~100 ms apart.
    per_cmd = _breakdown(rig, inv, host, runs, warmup)

    agent_phase = stats.per_unit(samples["agent x21"], samples["agent x1"], 20)
    fabric_cmd = stats.per_unit(samples["fabric x21"], samples["fabric x1"], 20)
    res.rows = [
        stats.Row("ops session, 1 ping (connect + agent start + 1 phase)", samples["agent x1"]),
        stats.Row("ops session, 21 pings", samples["agent x21"]),
        stats.Row("=> ops: cost of one more phase", agent_phase),
        stats.Row("fabric Connection, 1 c.run('true')", samples["fabric x1"]),
        stats.Row("fabric Connection, 21 c.run('true')", samples["fabric x21"]),
        stats.Row("=> fabric: cost of one more c.run", fabric_cmd),
        *per_cmd,
    ]
    m = stats.median(agent_phase)
    res.targets.append(stats.Target("extra cost per phase < 10 ms (loopback)", stats.fmt_time(m), m < 0.010))
    return res


def _breakdown(rig: Rig, inv, host, runs: int, warmup: int) -> list[stats.Row]:
    from ops.session import connect

    slow = _fabric_connection(rig, nodelay=False)
    fast = _fabric_connection(rig, nodelay=True)
    session = connect(inv, host)
    s = session.__enter__()
    try:

        def burst(fn) -> float:
            t = time.perf_counter()
            for _ in range(BURST):
                fn()
            return (time.perf_counter() - t) / BURST

        def raw_exec() -> None:
            ch = fast.transport.open_session()
            ch.exec_command("true")
            ch.recv_exit_status()
            ch.close()

        measures = {
            "c.run, paramiko as is (Nagle on)": lambda: slow.run("true", hide=True),
            "c.run, TCP_NODELAY": lambda: fast.run("true", hide=True),
            "paramiko exec 'true', TCP_NODELAY (channel + remote shell)": raw_exec,
            "remote shell start-up alone (bash -c true, ~/.bashrc as sshd runs it)": _bash_rc,
            "bash -c true without ~/.bashrc": _bash_plain,
            "agent ping on the open session": lambda: s.call("ping"),
        }
        out: dict[str, list[float]] = {k: [] for k in measures}
        for label, warm in stats.alternation(list(measures), runs, warmup):
            took = burst(measures[label])
            if not warm:
                out[label].append(took)
    finally:
        session.__exit__(None, None, None)
        slow.close()
        fast.close()
    return [stats.Row("per command on an open connection: " + k, v) for k, v in out.items()]


def _bash_rc() -> None:
    # Debian's bash sources ~/.bashrc for a non-interactive `bash -c` when SSH_CLIENT is set and
    # SHLVL < 2: exactly what sshd's exec does. This is the remote user's start-up cost.
    subprocess.run(
        ["bash", "-c", "true"],
        env={"SSH_CLIENT": "127.0.0.1 1 22", "SHLVL": "0", "HOME": _home(), "PATH": "/usr/bin:/bin"},
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _bash_plain() -> None:
    subprocess.run(
        ["bash", "-c", "true"],
        env={"HOME": _home(), "PATH": "/usr/bin:/bin"},
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _home() -> str:
    import os

    return os.path.expanduser("~")
