"""Edge cases of the on-host agent found in review: each test fails on the code before its fix.

Clean failures instead of agent errors (unreadable logs and heartbeats, a bad signal number, a
request that is not a JSON object), no secret in a check sent back, and no signal to a process
or group whose identity is not verified."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ops.agent import checks, server, supervisor
from ops.agent.gates import heartbeat_age, http_check, tail_lines
from ops.agent.lifecycle import Lifecycle
from ops.agent.procs import Proc
from ops.agent.secrets import Secrets

BASE = 4_100_000  # synthetic pids, far above any real one


def proc(pid: int, ppid: int, pgid: int, *argv: str, start: str = "100") -> Proc:
    return Proc(pid, ppid, pgid, pgid, 0, "S", start, 1000.0, tuple(argv))


def host(tmp_path: Path) -> dict:
    return {"name": "box", "path": str(tmp_path), "state_dir": str(tmp_path / "state")}


# --- clean failures, never an agent error ---------------------------------------------------------


def test_tail_lines_of_an_unreadable_log_is_no_lines_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()  # IsADirectoryError (a permission error is the same OSError)
    assert tail_lines(str(tmp_path / "log"), 5) == []


def test_heartbeat_age_of_an_unreadable_file_is_a_failed_reading_not_an_exception(tmp_path: Path) -> None:
    # the supervisor calls it in its main loop: an exception there would kill the supervisor
    (tmp_path / "hb.json").mkdir()
    age, detail = heartbeat_age({"file": str(tmp_path / "hb.json"), "field": "unix_ts"})
    assert age is None and detail == f"heartbeat {tmp_path}/hb.json cannot be read: Is a directory"


def test_verify_restart_refuses_a_signal_number_the_os_does_not_have(tmp_path: Path) -> None:
    spec = {"name": "api", "match": "api\\.py", "supervised_by": "daemon"}
    daemon = {"name": "daemon", "match": "daemon\\.py", "supervised_by": None}
    ch = checks.Checks({"host": host(tmp_path), "services": [spec], "all_services": [daemon, spec]})
    c = ch.restart(spec, signame="99")
    assert not c["ok"] and c["detail"] == "unknown signal '99'" and c["old_pid"] is None


def test_a_request_that_is_not_a_json_object_is_a_protocol_error_and_the_agent_serves_on() -> None:
    out = io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGPIPE)}
    try:
        server.serve(io.StringIO('[1, 2]\n{"id": 7, "op": "ping"}\n'), out)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert events[1] == {"event": "error", "type": "protocol", "message": "bad JSON request"}
    assert events[2]["id"] == 7 and events[2]["event"] == "result" and events[2]["data"]["pong"]


# --- secrets --------------------------------------------------------------------------------------


def test_a_multi_line_header_file_fails_without_its_value_in_the_detail(tmp_path: Path) -> None:
    # http.client refuses it with the value's repr in its message, which redaction does not catch
    (tmp_path / "token").write_text("tok-SECRET-one\ntok-SECRET-two\n")
    health = {"url": "http://127.0.0.1:9/x", "header_files": {"X-Token": str(tmp_path / "token")}}
    ok, detail, status = http_check(health, Secrets())
    assert not ok and status is None and "SECRET" not in detail
    assert detail == f"header X-Token: {tmp_path}/token holds more than one line; a header value is one line"


def test_checks_redact_the_env_file_secrets_of_the_hosts_services(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("API_TOKEN=s3cr3t-token-value\n")
    api = {"name": "api", "match": "api\\.py", "env_file": "api.env", "health": None}
    ch = checks.Checks({"host": host(tmp_path), "services": [api]})
    # e.g. verify.restart's log gate: the line it matched travels back in the check's gates
    c = ch._check(
        "restart",
        api,
        True,
        "ok s3cr3t-token-value",
        ch.clock(),
        gates=[{"name": "log", "detail": "log line matched: token=s3cr3t-token-value"}],
    )
    assert "s3cr3t-token-value" not in json.dumps(c)
    assert c["detail"] == "ok ***" and c["gates"][0]["detail"] == "log line matched: token=***"


# --- signals only to verified identities ------------------------------------------------------------


def test_a_root_pid_of_unknown_start_time_is_never_a_target(tmp_path: Path) -> None:
    lc = Lifecycle(host(tmp_path))
    table = {BASE: proc(BASE, 1, BASE, "someone-else"), BASE + 1: proc(BASE + 1, BASE, BASE, "its-child")}
    assert lc._targets(table, "svc", {"pid": BASE, "starttime": None})[0] == {}
    assert lc._targets(table, "svc", {"pid": BASE, "starttime": "100"})[0] == {BASE: "100", BASE + 1: "100"}


def test_a_group_whose_id_is_now_another_processs_pid_is_not_signalled(tmp_path: Path) -> None:
    lc = Lifecycle(host(tmp_path))
    # we started pid BASE at "100"; it is gone and BASE now leads a new group, started at "555"
    table = {BASE: proc(BASE, 1, BASE, "new", start="555"), BASE + 1: proc(BASE + 1, 1, BASE, "member")}
    state = {"pid": BASE, "starttime": "100", "pgid": BASE}
    assert lc._targets(table, "svc", state) == ({}, [])
    # the leader gone, its group's members are still ours
    del table[BASE]
    assert lc._targets(table, "svc", state) == ({BASE + 1: "100"}, [BASE])


def test_the_supervisor_does_not_kill_the_group_of_a_reaped_child_with_no_member_left(monkeypatch) -> None:
    sent = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        sent.append(sig)
        real_killpg(pgid, sig)

    monkeypatch.setattr(supervisor.os, "killpg", killpg)
    sup = supervisor.Supervisor({"name": "w", "stop_timeout": 5.0, "stop_signal": "TERM"})
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    sup.child = subprocess.Popen(sleeper, start_new_session=True)
    try:
        code = sup.stop_child("test")
    finally:
        if sup.child is not None:
            sup.child.kill()
            sup.child.wait()
    assert code == -15
    assert sent == [15]  # TERM to the live group; no KILL to the group id once the child is reaped


def test_the_deploy_lock_appears_with_its_content_and_a_second_taker_is_refused(tmp_path):
    import json

    from ops.agent import deployops

    lock = tmp_path / "deploy.lock"
    assert deployops._create_lock(str(lock), {"user": "alice"}) is True
    assert json.loads(lock.read_text()) == {"user": "alice"}
    assert deployops._create_lock(str(lock), {"user": "bob"}) is False
    assert json.loads(lock.read_text()) == {"user": "alice"}
    assert [p.name for p in tmp_path.iterdir()] == ["deploy.lock"]  # no temp file left behind
