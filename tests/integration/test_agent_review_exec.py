"""The agent's `exec` op stays bounded when a timed-out command left a process holding its output
(a daemon that called setsid, out of the process group the timeout kills)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ops.agent import execrun, server
from tests.harness import pid_alive

ESCAPER = """
import subprocess, sys, time
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
open(sys.argv[1], "w").write(str(p.pid))
print("spawned", flush=True)
time.sleep(60)
"""


def test_exec_returns_after_its_timeout_even_when_an_escaped_child_holds_its_output(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(execrun, "EXEC_DRAIN", 0.5)
    pidfile = tmp_path / "escaped.pid"
    t = time.monotonic()
    try:
        cmd = [sys.executable, "-c", ESCAPER, str(pidfile)]
        r = server.op_exec({"cmd": cmd, "timeout": 2}, lambda e: None)
        took = time.monotonic() - t
    finally:
        if pidfile.exists():  # written before "spawned": the escaped child to clean up
            pid = int(pidfile.read_text() or 0)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert r["timed_out"] and r["exit_code"] == -9
    assert r["stdout"] == "spawned\n"
    assert took < 10, took  # 2 s timeout + 0.5 s drain; before the fix: until the escaped child exits
