"""Issue 12 end to end: several HTTP checks per service (item 8: the positive lookup AND "a wrong
token gets 401"), in the start gate as declared, in status, verify.health and verify.all; and
`inv status` exits non-zero, with a code per finding, unless every service runs healthy (item 11).
Real services on `local` and on the sshd host."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from ops import verify
from tests.harness import free_port, pid_alive, wait_until
from tests.integration.rig import Rig, by_name, rig_fixture  # noqa: F401


def token_api(rig: Rig, accept_any: bool = False, negative_gates: bool = True) -> dict[str, Any]:
    flags = ["--accept-any"] if accept_any else []
    return {"api": {
        "cmd": rig.script("token_api.py", "--port", "${port}", "--token-file", rig.token_file, *flags,
                          python=sys.executable),
        "port": free_port(),
        "ready": {"timeout": 5},
        "health": [
            {"name": "lookup", "url": "http://127.0.0.1:${port}/lookup?name=alice", "body": "alice",
             "header_files": {"X-Token": str(rig.token_file)}},
            {"name": "wrong-token", "url": "http://127.0.0.1:${port}/lookup?name=alice", "status": 401,
             "headers": {"X-Token": "not-the-token"}, "gate": negative_gates},
        ],
    }}


# --- item 8: several HTTP checks ----------------------------------------------------------------


def test_both_checks_gate_the_start_and_pass_in_status_and_verify(rig: Rig) -> None:
    rig.write(token_api(rig))

    r = by_name(rig.start())["api"]

    assert r["outcome"] == "started", r
    assert sorted(g["name"] for g in r["gates"]) == ["health lookup", "health wrong-token", "port"]
    st = rig.status("api")["api"]
    assert st["health"]["ok"] and [c["name"] for c in st["health"]["checks"]] == ["lookup", "wrong-token"]
    assert st["health"]["checks"][1]["status"] == 401
    report = verify.health(rig.agent, ["api"])
    detail = report.checks[0]["detail"]
    assert report.ok and "wrong-token:" in detail and "answered 401" in detail
    assert verify.verify_all(rig.agent).ok
    rig.stop()


def test_an_api_that_accepts_any_token_fails_the_start_at_the_wrong_token_check(rig: Rig) -> None:
    rig.write(token_api(rig, accept_any=True))

    r = by_name(rig.start())["api"]

    assert r["outcome"] == "failed", r
    assert r["failed_gate"] == "health wrong-token"
    assert "answered 200, expected 401" in r["detail"]
    rig.wait_none_running(timeout=5)


def test_a_check_kept_out_of_the_gate_still_fails_status_verify_and_status_exit(rig: Rig) -> None:
    rig.write(token_api(rig, accept_any=True, negative_gates=False))

    r = by_name(rig.start())["api"]

    assert r["outcome"] == "started", r  # only the lookup gates the start, as declared
    assert sorted(g["name"] for g in r["gates"]) == ["health lookup", "port"]
    st = rig.status("api")["api"]
    assert not st["health"]["ok"]
    detail = st["health"]["detail"]
    assert detail.startswith("wrong-token: ") and "answered 200, expected 401" in detail
    assert not verify.health(rig.agent, ["api"]).ok
    assert not verify.verify_all(rig.agent).ok
    out = rig.inv_json("status", code=1)  # running but unhealthy
    assert out["hosts"][0]["services"][0]["health"]["ok"] is False
    rig.stop()


# --- item 11: inv status exit codes -------------------------------------------------------------


def test_status_exits_0_only_when_every_service_runs_healthy_and_a_code_per_finding(rig: Rig) -> None:
    rig.write({**token_api(rig),
               "svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "^ready"}},
               "looper": {"cmd": rig.script("crash_on_start.py", "--code", 3), "restart": "always",
                          "backoff": 30, "ready": {"log": "never", "timeout": 1}}},
              host_services=["api", "svc"])
    assert rig.inv_cmd("status").returncode == 6  # nothing started yet: stopped
    assert rig.start().ok

    assert rig.inv_json("status", code=0)  # every selected service running and healthy

    pid = rig.status("svc")["svc"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout=5)
    assert rig.inv_json("status", code=7)["hosts"][0]["services"][1]["state"] == "dead"
    assert rig.inv_json("status", "--service", "api", code=0)  # only the selected ones count

    rig.stop("svc")
    assert rig.inv_cmd("status", "--service", "svc").returncode == 6
    assert rig.inv_cmd("status").returncode == 6  # api healthy, svc stopped

    stray = rig.tracker.start(rig.script("late_ready.py", "--delay", 0).split())[0]
    wait_until(lambda: rig.status("svc")["svc"]["state"] == "unknown", timeout=10)
    assert rig.inv_cmd("status", "--service", "svc").returncode == 8  # not started by the tool
    stray.kill()
    stray.wait(5)
    rig.stop()
