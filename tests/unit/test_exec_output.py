"""The agent's `exec` op (ops/agent/execrun.py), called directly with real processes: its output is
redacted like log tails, bounded (a tail in memory, a shorter tail sent back, the kept tail saved
on the host), and a background child that keeps stdout open does not turn a pass into a timeout."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ops.agent import execrun, server
from ops.agent.secrets import Secrets
from tests.harness import pid_alive, wait_until


def secrets_with(*values: str) -> Secrets:
    s = Secrets()
    s.values.update(values)
    return s


def test_an_env_file_value_printed_by_the_command_comes_back_redacted(tmp_path: Path) -> None:
    env = tmp_path / "svc.env"
    env.write_text("API_TOKEN=tok-5up3r-s3cr3t\nLOG_LEVEL=info-not-secret\n")
    spec = {"name": "web", "env_file": str(env)}
    cmd = f"cat {env}; echo 'token tok-5up3r-s3cr3t' >&2; exit 1"
    r = server.op_exec({"cmd": cmd, "all_services": [spec], "base": str(tmp_path)}, lambda e: None)
    assert r["exit_code"] == 1
    assert "tok-5up3r-s3cr3t" not in repr(r)
    assert r["stdout"] == "API_TOKEN=***\nLOG_LEVEL=***\n"  # every env_file value is a secret
    assert r["stderr"] == "token ***\n"


def test_without_the_service_specs_nothing_is_redacted(tmp_path: Path) -> None:
    """The healthy twin: redaction is by the declared secrets, not a blanket filter."""
    r = server.op_exec({"cmd": "echo tok-5up3r-s3cr3t"}, lambda e: None)
    assert r["stdout"] == "tok-5up3r-s3cr3t\n"


def test_a_huge_output_is_bounded_and_its_kept_tail_is_saved_on_the_host(tmp_path: Path) -> None:
    code = "import sys\nfor i in range(200000): print('line %06d secret-abcdef' % i)\nprint('LAST')"
    saved = tmp_path / "state" / "preflight" / "t.out"
    r = execrun.run(
        {"cmd": [sys.executable, "-c", code], "keep_bytes": 4096, "return_bytes": 1024, "save": str(saved)},
        secrets_with("secret-abcdef"),
    )
    assert r["exit_code"] == 0 and not r["timed_out"]
    assert r["stdout_bytes"] == 200000 * 26 + 5 and r["truncated"] is True
    assert len(r["stdout"]) <= 1024 and r["stdout"].endswith("line 199999 ***\nLAST\n")
    assert r["stdout"].startswith("line ")  # the partial first line was dropped
    assert "secret-abcdef" not in r["stdout"]
    assert r["saved"] == str(saved)
    kept = saved.read_text()
    assert kept.startswith("[... first ") and kept.endswith("LAST\n")
    assert len(kept) < 4096 + 100 and "secret-abcdef" not in kept


def test_a_tail_cut_inside_a_secret_leaves_no_half_of_it() -> None:
    t = execrun.Tail(8)
    t.add(b"xx TOPSECRET-VALUE\nok\n")
    t.add(b"")
    # the last 8 bytes start inside the secret's line: that line is dropped, not shown half
    assert t.text(redact=secrets_with("TOPSECRET-VALUE").redact) == "ok\n"


def test_a_background_child_holding_stdout_does_not_turn_a_pass_into_a_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "holder.pid"
    cmd = f"sleep 300 & echo $! > {pidfile}; echo '3 passed in 0.01s'; exit 0"
    t = time.monotonic()
    r = execrun.run({"cmd": cmd, "timeout": 60, "linger": 0.5}, Secrets())
    took = time.monotonic() - t
    holder = int(pidfile.read_text())
    assert (r["exit_code"], r["timed_out"], r["lingering"]) == (0, False, True)
    assert r["stdout"] == "3 passed in 0.01s\n"
    assert took < 30, took  # bounded by the linger (+ drain), not by the 60 s timeout
    # the leftover was in the command's own group: killed, not left running
    assert wait_until(lambda: not pid_alive(holder), timeout=10)


def test_a_command_still_running_at_its_timeout_is_a_timeout() -> None:
    """The twin: the command ITSELF outliving its timeout still fails as a timeout."""
    r = execrun.run({"cmd": "echo started; sleep 300", "timeout": 1, "linger": 0.5}, Secrets())
    assert (r["timed_out"], r["lingering"]) == (True, False)
    assert r["exit_code"] == -9 and r["stdout"] == "started\n"


def test_a_plain_command_reports_exit_code_and_both_streams(tmp_path: Path) -> None:
    r = execrun.run({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"], "cwd": str(tmp_path)}, Secrets())
    assert (r["exit_code"], r["stdout"], r["stderr"], r["lingering"]) == (3, "out\n", "err\n", False)
    r = execrun.run({"cmd": ["cat"], "stdin": "fed through stdin\n"}, Secrets())
    assert r["stdout"] == "fed through stdin\n"
    r = execrun.run({"cmd": ["/nonexistent/tool"]}, Secrets())
    assert r["exit_code"] == 127 and "No such file" in r["stderr"]


def test_the_agent_package_still_imports_on_its_own() -> None:
    # execrun is stdlib only (the agent runs on hosts with python >= 3.8 and nothing else)
    src = Path(execrun.__file__).read_text()
    imports = [ln.split()[1] for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert set(imports) <= {"os", "select", "signal", "subprocess", "threading", "time", ".state"}
    assert os.path.basename(execrun.__file__) == "execrun.py"
