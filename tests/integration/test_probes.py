"""Checks beyond HTTP (cmd, file, tcp) in verify.all, on the `local` host and the sshd host: each
passes on the healthy demo and fails on its broken twin, with the reason in the detail."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ops import verify
from tests.harness import free_port, wait_for_port
from tests.integration.rig import PY, Rig, local_rig_fixture, rig_fixture  # noqa: F401

# GET /health of the demo API; exit 1 (HTTPError) on a 500
HEALTH = ("import sys, urllib.request; url = 'http://127.0.0.1:%s/health' % sys.argv[1]; "
          "print(urllib.request.urlopen(url, timeout=5).read().decode())")


def with_probes(rig: Rig, env: dict[str, str] | None = None, worker_flags: str = "",
                extra_api: list[Any] | None = None) -> dict[str, dict[str, Any]]:
    services = rig.demo(python=PY, env=env, worker_interval=0.1, worker_flags=worker_flags)
    services["demo_api"]["checks"] = [
        "tree",
        {"cmd": [PY, "-c", HEALTH, "${port}"], "output": '"status": "ok"', "name": "health-cmd"},
        {"tcp": "${port}"},
        *(extra_api or []),
    ]
    services["demo_worker"]["checks"] = [
        {"file": "${state_dir}/worker-heartbeat.json", "since_start": True, "max_age": 5, "name": "beat"},
    ]
    return services


def by_name(report: verify.VerifyReport) -> dict[str, dict[str, Any]]:
    """The checks of demo_api and demo_worker by name (demo_daemon's default ones left out)."""
    return {c["name"]: c for c in report.checks if c["service"] != "demo_daemon"}


def test_cmd_file_and_tcp_checks_pass_on_the_healthy_demo(rig: Rig) -> None:
    rig.write(with_probes(rig))
    try:
        assert rig.start().ok
        report = verify.verify_all(rig.agent)
        checks = by_name(report)
        assert report.ok, report.summary()
        assert list(checks) == ["tree", "health-cmd", "tcp", "beat"]
        assert checks["health-cmd"]["detail"].endswith('output matches /"status": "ok"/: "status": "ok"')
        assert checks["health-cmd"]["exit_code"] == 0
        assert checks["tcp"]["detail"].startswith(f"127.0.0.1:{rig.api_port} answers in ")
        assert "held by pid" in checks["tcp"]["detail"]
        assert "after the service's last start" in checks["beat"]["detail"]
        # the same through the real command, as deploy's verify step runs it
        r = rig.inv_cmd("verify.all", "--host", "box")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "health-cmd" in r.stdout and "beat" in r.stdout
    finally:
        rig.stop()


def test_cmd_and_file_checks_fail_on_a_broken_twin(rig: Rig) -> None:
    # the API answers /health with 500, the worker never writes its heartbeat, and the heartbeat
    # file on disk is a leftover of an earlier run
    beat = rig.state_dir / "worker-heartbeat.json"
    beat.parent.mkdir(parents=True, exist_ok=True)
    beat.write_text(json.dumps({"unix_ts": time.time()}))
    old = time.time() - 30
    os.utime(beat, (old, old))
    rig.write(with_probes(rig, env={"DEMO_API_FAIL": "1"}, worker_flags="--freeze-after 0"))
    try:
        assert rig.start().ok
        report = verify.verify_all(rig.agent)
        checks = by_name(report)
        assert not report.ok
        assert checks["tree"]["ok"] and checks["tcp"]["ok"]
        cmd = checks["health-cmd"]
        assert not cmd["ok"] and cmd["exit_code"] == 1
        assert "exited 1, expected 0: " in cmd["detail"] and "HTTP Error 500" in cmd["detail"]
        assert not checks["beat"]["ok"]
        assert "before the service's last start: not written by this run" in checks["beat"]["detail"]
        r = rig.inv_cmd("verify.all", "--host", "box")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "health-cmd" in r.stdout and "not written by this run" in r.stdout
    finally:
        rig.stop()


def test_file_check_fails_when_nothing_matches_and_when_stale(local_rig: Rig) -> None:
    rig = local_rig
    services = with_probes(rig, worker_flags="--freeze-after 0.5")
    services["demo_worker"]["checks"] = [
        {"file": "${state_dir}/no-such-*.json", "name": "missing"},
        {"file": "${state_dir}/worker-heartbeat.json", "max_age": 1, "name": "stale"},
    ]
    rig.write(services)
    try:
        assert rig.start().ok
        deadline = time.monotonic() + 30
        while True:  # the frozen worker's heartbeat ages past max_age
            checks = by_name(verify.verify_all(rig.agent))
            if not checks["stale"]["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert checks["missing"]["detail"] == f"nothing matches {rig.state_dir}/no-such-*.json"
        assert not checks["stale"]["ok"] and checks["stale"]["detail"].endswith("max_age 1s: STALE")
    finally:
        rig.stop()


def test_tcp_check_fails_on_a_port_held_by_someone_else_and_on_a_silent_port(rig: Rig) -> None:
    nothing = free_port()
    rig.write(with_probes(rig, extra_api=[{"tcp": f"127.0.0.1:{nothing}", "name": "silent"}]))
    holder, _log = rig.tracker.start([PY, str(rig.checkout / "services" / "port_holder.py"),
                                      "--port", str(rig.api_port)])
    wait_for_port(rig.api_port, timeout=10)
    checks = by_name(verify.verify_all(rig.agent))  # the demo is NOT started: the port is someone else's
    tcp = checks["tcp"]
    assert not tcp["ok"]
    assert f"127.0.0.1:{rig.api_port} answers, but it is held by pid {holder.pid} (" in tcp["detail"]
    assert "port_holder.py" in tcp["detail"]
    assert tcp["detail"].endswith(": its supervisor demo_daemon is not running")
    assert not checks["silent"]["ok"]
    assert checks["silent"]["detail"].startswith(f"127.0.0.1:{nothing} does not answer: ")
