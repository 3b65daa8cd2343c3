"""Issue 8 end to end: services with a restart policy run under the tool's own supervisor on the
host; start, status, stop, verify.restart and verify.orphans all work with it (local and sshd)."""

from __future__ import annotations

import os
import signal

import pytest

from ops import verify
from tests.harness import pid_alive, wait_until
from tests.integration.rig import Rig, by_name, local_rig_fixture, rig_fixture  # noqa: F401

CRASH_ONCE = "crash_once.py"


def crash_once(rig: Rig) -> str:
    """A service that crashes on its first run and stays up on the next ones."""
    script = rig.checkout / "services" / CRASH_ONCE
    script.write_text(
        "import os, sys, time\n"
        "flag = sys.argv[1]\n"
        "if not os.path.exists(flag):\n"
        "    open(flag, 'w').close(); print('first run: crashing', flush=True); sys.exit(4)\n"
        "print('up and ready', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    return rig.script(CRASH_ONCE, rig.root / "flag")


def test_a_crash_loop_trips_the_breaker_shows_fatal_and_start_resets_it(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("crash_on_start.py", "--code", "3"), "restart": "on-failure",
                       "backoff": 0.05, "breaker": 3, "min_uptime": 5, "ready": {"log": "never printed",
                                                                                  "timeout": 2}}})
    r = by_name(rig.start())["svc"]
    assert r["outcome"] == "failed"
    log, words = rig.log("svc").read_text(), rig.supervisor_log("svc").read_text()
    assert "CRITICAL svc: 3 consecutive runs shorter than 5s (exit codes 3, 3, 3); not restarting" in words
    assert log.count("fatal: cannot start") == 3
    assert "ops-supervisor" not in log
    rig.wait_none_running(timeout=5)


def test_status_shows_fatal_with_the_exit_codes_after_the_breaker_trips(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "restart": "always",
                       "backoff": 0.05, "breaker": 3, "min_uptime": 30, "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    # from now on every run dies at once: the breaker must trip and the service stay down
    for _ in range(3):
        wait_until(lambda: rig.status("svc")["svc"]["state"] in ("running", "fatal"), timeout=10)
        st = rig.status("svc")["svc"]
        if st["state"] == "fatal":
            break
        os.kill(st["pid"], signal.SIGKILL)
        wait_until(lambda old=st["pid"]: rig.status("svc")["svc"]["pid"] != old, timeout=10)
    wait_until(lambda: rig.status("svc")["svc"]["state"] == "fatal", timeout=10)
    st = rig.status("svc")["svc"]
    assert "crash loop" in st["detail"] and "-9" in st["detail"] and "start svc" in st["detail"]
    rig.wait_none_running(timeout=5)
    # `start` resets it: a fresh supervisor, counters at zero
    again = by_name(rig.start())["svc"]
    assert again["outcome"] == "started"
    assert rig.status("svc")["svc"]["restarts"] == 0


def test_a_killed_child_comes_back_after_the_backoff_and_status_counts_it(rig: Rig) -> None:
    rig.write({"svc": {"cmd": crash_once(rig), "restart": "on-failure", "backoff": 0.2,
                       "min_uptime": 0.1, "ready": {"log": "up and ready"}}})
    r = by_name(rig.start())["svc"]
    assert r["outcome"] == "started"  # the first run crashed; the supervisor brought it back
    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["restarts"] == 1 and st["last_exit"] == 4
    child = st["pid"]
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: rig.status("svc")["svc"]["pid"] not in (None, child), timeout=10)
    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["restarts"] == 2 and st["last_exit"] == -9
    assert "restarting in 0.4s" in rig.supervisor_log("svc").read_text()  # the backoff doubled


def test_status_shows_backoff_with_the_next_try(local_rig: Rig) -> None:
    rig = local_rig
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "restart": "always",
                       "backoff": 30, "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    os.kill(rig.status("svc")["svc"]["pid"], signal.SIGKILL)
    wait_until(lambda: rig.status("svc")["svc"]["state"] == "backoff", timeout=10)
    st = rig.status("svc")["svc"]
    assert "next try in" in st["detail"] and "killed by signal 9" in st["detail"]


def test_stop_is_never_followed_by_a_restart(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("ignore_term.py"), "restart": "always", "backoff": 0.05,
                       "stop_timeout": 0.5, "ready": {"log": "ignoring TERM"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    child = rig.status("svc")["svc"]["pid"]
    r = by_name(rig.stop())["svc"]
    assert r["outcome"] == "stopped", r
    assert not pid_alive(child)
    rig.wait_none_running(timeout=0)
    assert "not restarting" in rig.supervisor_log("svc").read_text()
    assert rig.status("svc")["svc"]["state"] == "stopped"
    # and nothing comes back afterwards
    with pytest.raises(TimeoutError):
        wait_until(lambda: rig.running(), timeout=1.0)


def test_a_frozen_service_is_restarted(local_rig: Rig) -> None:
    rig = local_rig
    hb = rig.root / "hb.json"
    rig.write({"svc": {"cmd": f"python3 {rig.checkout}/demo/worker.py --heartbeat {hb} --interval 0.1"
                              " --freeze-after 0.3", "restart": "always", "backoff": 0.1, "min_uptime": 0.1,
                       "heartbeat": {"file": str(hb), "field": "unix_ts", "max_age": 0.8},
                       "ready": {"log": "worker ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    wait_until(lambda: (rig.status("svc")["svc"]["restarts"] or 0) >= 1, timeout=15)
    assert (rig.status("svc")["svc"]["last_reason"] or "").startswith("frozen")


def test_verify_restart_works_against_the_tools_supervisor(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0.2), "restart": "always",
                       "backoff": 0.1, "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    report = verify.restart(rig.agent, "svc", timeout=10)
    check = report.checks[0]
    assert report.ok, check["detail"]
    assert check["new_pid"] != check["old_pid"] and check["restart_time"] < 10


def test_a_supervisor_killed_with_kill_leaves_an_orphan_that_verify_reports_and_stop_cleans(
        rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "restart": "always",
                       "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    supervisor = rig.state("svc")["pid"]
    child = rig.status("svc")["svc"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: not pid_alive(supervisor), timeout=5)
    assert pid_alive(child)
    report = verify.orphans(rig.agent, ["svc"])
    assert not report.ok
    assert str(child) in report.checks[0]["detail"]
    r = by_name(rig.stop())["svc"]
    assert r["outcome"] == "stopped" and [o["pid"] for o in r["orphans"]] == [child]
    rig.wait_none_running(timeout=0)
