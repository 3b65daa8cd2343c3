"""Start end to end: the demo passes every gate with its secret kept out of argv and output;
start is idempotent and ordered; one agent call per phase; the real `inv` commands and logs.
Real services, on `local` and on the real sshd host."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ops.agentclient import AgentSession
from tests.harness import pid_alive, process_ids, processes_with, wait_for_text, wait_until
from tests.integration.rig import (  # noqa: F401
    REPO,
    Rig,
    by_name,
    local_rig_fixture,
    rig_fixture,
)


def all_cmdlines() -> str:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.append(Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)


def leaky(rig: Rig) -> dict:
    """A service that prints its secret to its log (the tool must never pass it on)."""
    late_ready = rig.checkout / "services" / "late_ready.py"
    return {
        "cmd": f"sh -c 'echo leaked $DEMO_TOKEN; exec python3 {late_ready} --delay 0 --line up'",
        "match": rig.pattern("late_ready.py"),
        "env_file": str(rig.env_file),
        "ready": {"log": "^up$"},
    }


def test_demo_starts_through_all_gates_and_its_token_never_shows(rig: Rig) -> None:
    rig.write(rig.demo())

    result = rig.start()

    assert result.ok, result.services
    r = by_name(result)
    assert [x["outcome"] for x in result.services] == ["started", "supervised", "started"]
    assert {g["name"] for g in r["demo_daemon"]["gates"]} == {
        "log",
        "demo_api: child",
        "demo_api: port",
        "demo_api: health",
    }
    assert all(g["ok"] for g in r["demo_daemon"]["gates"])
    daemon, api = r["demo_daemon"]["pid"], r["demo_api"]["pid"]
    assert pid_alive(daemon) and pid_alive(api)
    # the api really is the daemon's child, and the daemon runs detached in its own session
    assert process_ids(api)["ppid"] == daemon
    assert os.getsid(daemon) == daemon
    assert os.readlink(f"/proc/{daemon}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{daemon}/fd/1") == str(rig.log("demo_daemon"))
    assert os.readlink(f"/proc/{daemon}/fd/2") == str(rig.log("demo_daemon"))
    assert os.readlink(f"/proc/{daemon}/cwd") == str(rig.checkout)
    state = rig.state("demo_daemon")
    assert (state["pid"], state["pgid"], state["stopped"]) == (daemon, daemon, False)
    assert state["starttime"] == Path(f"/proc/{daemon}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    assert state["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    # the secret reached the api through the environment only
    assert f"DEMO_TOKEN={rig.token}".encode() in Path(f"/proc/{api}/environ").read_bytes()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert rig.token not in ps
    assert rig.token not in all_cmdlines()
    status = rig.status()
    assert {s["state"] for s in status.values()} == {"running"}
    assert status["demo_api"]["health"]["ok"] is True
    assert rig.token not in json.dumps(result.services) + json.dumps(status)
    assert rig.stop().ok


def test_second_start_says_already_running_and_changes_nothing(rig: Rig) -> None:
    rig.write(rig.demo())
    first = by_name(rig.start())
    state_before = rig.state("demo_daemon")

    second = rig.start()

    assert second.ok
    r = by_name(second)
    assert r["demo_daemon"]["outcome"] == "already-running"
    assert r["demo_worker"]["outcome"] == "already-running"
    assert "nothing to do" in r["demo_daemon"]["detail"]
    assert r["demo_daemon"]["pid"] == first["demo_daemon"]["pid"]
    assert r["demo_api"]["pid"] == first["demo_api"]["pid"]
    assert r["demo_worker"]["pid"] == first["demo_worker"]["pid"]
    assert rig.state("demo_daemon") == state_before
    assert rig.log("demo_daemon").read_text().count("daemon starting") == 1
    rig.stop()


def test_start_follows_after_and_a_failure_skips_the_rest(rig: Rig) -> None:
    ok = {
        "cmd": rig.script("late_ready.py", "--delay", 0, "--line", "first-up"),
        "ready": {"log": "first-up"},
    }
    rig.write(
        {
            "third": {"cmd": rig.script("late_ready.py", "--delay", 0), "after": ["second"]},
            "second": {
                "cmd": rig.script("crash_on_start.py", "--code", 3),
                "after": ["first"],
                "ready": {"log": "ready"},
            },
            "first": ok,
        },
        host_services=["third", "second", "first"],
    )

    result = rig.start()

    assert not result.ok
    assert [(r["name"], r["outcome"]) for r in result.services] == [
        ("first", "started"),
        ("second", "failed"),
        ("third", "skipped"),
    ]
    assert "second failed" in by_name(result)["third"]["detail"]
    assert not rig.log("third").exists()
    assert pid_alive(by_name(result)["first"]["pid"]), "what started before the failure stays up"
    rig.stop()
    rig.wait_none_running(timeout=0)


def test_start_refuses_when_an_unmanaged_copy_already_runs(rig: Rig) -> None:
    cmd = rig.script("late_ready.py", "--delay", 0)
    rig.write({"svc": {"cmd": cmd, "ready": {"log": "ready"}}})
    copy, copy_log = rig.tracker.start(cmd.split(), cwd=rig.checkout)
    # its first line: the interpreter runs (not a shim of python3 still on its way to it)
    wait_until(lambda: "booting" in copy_log.read_text(), 10)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "failed"
    assert f"already running outside this tool's control: pid {copy.pid} (" in r["detail"]
    assert copy.poll() is None, "start never kills what it did not start"
    assert not rig.log("svc").exists()
    assert list(rig.running()) == [copy.pid]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = AgentSession.call

    def counting(self, op, args=None, on_event=None, timeout=None):
        calls.append(op)
        return original(self, op, args, on_event=on_event, timeout=timeout)

    monkeypatch.setattr(AgentSession, "call", counting)
    return calls


def test_a_phase_on_a_host_is_one_agent_call(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.write(rig.demo())
    calls = _count_calls(monkeypatch)

    with rig.session() as s:
        from ops import control

        started = control.start(s, None)
        assert calls == ["start"]
        stopped = control.stop(s, None)
        assert calls == ["start", "stop"]

    assert started.ok and len(started.services) == 3
    assert stopped.ok and len(stopped.services) == 3


def test_stopping_three_services_with_escalation_is_one_agent_call(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubborn = {"ready": {"log": "ignoring TERM"}, "stop_timeout": 0.3}
    rig.write({f"s{i}": {"cmd": rig.script("ignore_term.py", f"--n{i}"), **stubborn} for i in range(3)})
    assert rig.start().ok
    calls = _count_calls(monkeypatch)

    stopped = rig.stop()

    assert calls == ["stop"]
    assert [r["escalated"] for r in stopped.services] == [True, True, True]
    rig.wait_none_running(timeout=0)


def test_agent_replies_redact_the_secret_from_log_tails(rig: Rig) -> None:
    rig.write({"leaky": leaky(rig)})
    started = by_name(rig.start())["leaky"]
    assert started["outcome"] == "started"
    assert rig.token in rig.log("leaky").read_text()  # the service did leak it into its own log

    logs = rig.inv_cmd("logs", "leaky", "-n", "5", "--json")
    assert logs.returncode == 0, logs.stderr
    assert json.loads(logs.stdout)["lines"] == ["leaked ***", "booting", "up"]

    os.kill(started["pid"], signal.SIGKILL)  # dead: status shows the last log line
    wait_until(lambda: not pid_alive(started["pid"]), 5)
    rig.log("leaky").open("a").write(f"last words {rig.token}\n")
    st = rig.inv_cmd("status", "--json")
    (svc,) = json.loads(st.stdout)["hosts"][0]["services"]
    assert svc["state"] == "dead"
    assert "last words ***" in svc["detail"]
    assert rig.token not in st.stdout + st.stderr + logs.stdout + logs.stderr


def test_a_childs_log_is_redacted_of_the_secret_it_inherits_from_its_supervisor(
    local_rig: Rig, tmp_path: Path
) -> None:
    rig = local_rig
    other = tmp_path / "other.token"
    other.write_text("a-different-header-token\n")  # the api's own secret is not the env token
    rig.write(rig.demo(header_file=other))
    log = rig.log("demo_api")
    log.parent.mkdir(parents=True)
    log.write_text(f"debug: env DEMO_TOKEN={rig.token}\n")  # the api got it from the daemon's env

    out = rig.inv_cmd("logs", "demo_api", "-n", "1")

    assert out.returncode == 0, out.stderr
    assert out.stdout == "debug: env DEMO_TOKEN=***\n"


def test_inv_logs_prints_the_last_n_lines(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    log = rig.log("svc")
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"old {i}\n" for i in range(1, 21)))
    assert rig.start().ok

    out = rig.inv_cmd("logs", "svc", "-n", "5")

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["old 18", "old 19", "old 20", "booting", "ready"]
    rig.stop()


def _agents_under(root: int) -> set[int]:
    """Agent processes (their command line runs ops-agent/agent-*.pyz) in root's process tree."""
    agents = processes_with("ops-agent/agent-")
    found = set()
    for pid in agents:
        p = pid
        while p > 1:
            if p == root:
                found.add(pid)
                break
            ids = process_ids(p)
            if ids is None:
                break
            p = ids["ppid"]
    return found


def test_inv_logs_follow_streams_new_lines_and_leaves_no_agent_behind(
    rig: Rig, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    rig.write({"leaky": leaky(rig)})
    assert rig.start().ok
    out_path = tmp_path / "follow.out"
    root = os.getpid() if rig.kind == "local" else request.getfixturevalue("sshd").proc.pid
    before = _agents_under(root)  # this test's own session
    env = dict(os.environ, OPS_INVENTORY=str(rig.inv_path))
    with open(out_path, "wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "invoke", "logs", "leaky", "-n", "0", "--follow"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        agents = wait_until(lambda: _agents_under(root) - before, 10, message="the follow agent to run")
        n = [0]

        def streamed() -> bool:
            # -n 0: nothing is printed but what the follow streams; keep writing until it shows
            n[0] += 1
            with rig.log("leaky").open("a") as f:
                f.write(f"followed line {n[0]} {rig.token}\n")
            return "followed line" in out_path.read_text()

        wait_until(streamed, 10, interval=0.1)
        text = wait_for_text(out_path, "\n", timeout=1)
        assert re.search(r"^followed line \d+ \*\*\*$", text, re.MULTILINE), text
        assert rig.token not in text
    finally:
        follower.terminate()
        follower.wait(10)
    wait_until(lambda: not any(pid_alive(a) for a in agents), 10, message="the agent to exit")
    assert _agents_under(root) <= before
    rig.stop()


def test_real_inv_start_and_stop_exit_codes_and_plain_output(rig: Rig) -> None:
    rig.write(
        {
            "good": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}},
            "bad": {
                "cmd": rig.script("crash_on_start.py", "--code", 3),
                "after": ["good"],
                "ready": {"log": "ready"},
            },
        }
    )

    good = rig.inv_cmd("start", "--service", "good")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "good: started" in good.stdout

    bad = rig.inv_cmd("start")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "bad: failed" in bad.stdout
    assert "bad failed at gate 'log', exit code 3" in bad.stdout
    assert "  | fatal: cannot start" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr

    stop = rig.inv_cmd("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "good: stopped" in stop.stdout
    rig.wait_none_running(timeout=0)
