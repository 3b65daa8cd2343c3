"""Issue 12 end to end, the tool's own supervisor (restart policies): its words stay out of the
service's log (item 3), a start ending in the breaker reports the service's exit codes and status
keeps `fatal` (5), a torn heartbeat read is not a freeze (7), `max_restarts` caps restarts (9), a
restart never spawns into a port someone else holds and names the holder (10). Real services on
`local` and on the sshd host."""

from __future__ import annotations

import os
import signal
import sys

from ops import verify
from tests.harness import pid_alive, wait_for_port, wait_for_port_closed, wait_until
from tests.integration.rig import REPO, Rig, by_name, rig_fixture  # noqa: F401

HOLDER = str(REPO / "tests" / "fixtures" / "services" / "port_holder.py")


def crash_once(rig: Rig) -> str:
    script = rig.checkout / "services" / "crash_once.py"
    script.write_text(
        "import os, sys, time\n"
        "flag = sys.argv[1]\n"
        "if not os.path.exists(flag):\n"
        "    open(flag, 'w').close(); print('first run: crashing', flush=True); sys.exit(4)\n"
        "print('up and ready', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    return rig.script("crash_once.py", rig.root / "flag")


# --- item 3: the supervisor's own words never satisfy the service's log gate -------------------


def test_the_supervisors_started_line_does_not_pass_a_log_gate_on_started(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 60, "--line", "never"),
                       "restart": "always", "ready": {"log": "started", "timeout": 2}}})

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "failed", r
    assert r["failed_gate"] == "log" and "no line matching /started/" in r["detail"]
    assert "ops-supervisor" not in rig.log("svc").read_text()
    # its words are shown beside the service's: in the failed start, and by `logs`
    assert any("svc: started pid" in ln for ln in r["supervisor_log_tail"])
    assert "svc: started pid" in rig.supervisor_log("svc").read_text()
    rig.wait_none_running(timeout=5)


def test_a_service_that_prints_started_passes_and_logs_shows_both_logs(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0, "--line", "started"),
                       "restart": "always", "ready": {"log": "started"}}})

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started", r
    out = rig.inv_json("logs", "svc", code=0)
    assert out["lines"] == ["booting", "started"]
    assert any("svc: started pid" in ln for ln in out["supervisor"]["lines"])
    plain = rig.inv_cmd("logs", "svc")
    assert plain.returncode == 0 and "the tool's supervisor" in plain.stdout
    rig.stop()


# --- item 5: a crash loop reports the service's exit codes; status keeps fatal -----------------


def test_a_start_ending_in_the_breaker_reports_the_services_exit_codes_and_status_stays_fatal(
        rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("crash_on_start.py", "--code", "3"), "restart": "on-failure",
                       "backoff": 0.05, "breaker": 3, "min_uptime": 5,
                       "ready": {"log": "never printed", "timeout": 20}}})

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "failed"
    assert r["exit_code"] == 3, r  # the service's, not its supervisor's exit 0
    assert "exit codes 3, 3, 3" in r["detail"] and "code 0" not in r["detail"], r["detail"]
    assert "crash loop" in r["detail"]
    st = rig.status("svc")["svc"]
    assert st["state"] == "fatal", st
    assert "exit codes 3, 3, 3" in st["detail"] and "start svc" in st["detail"]
    by_name(rig.stop())  # a stop does not reset it either: only start does
    assert rig.status("svc")["svc"]["state"] == "fatal"


def test_a_start_that_survives_one_crash_is_started_and_running(rig: Rig) -> None:
    rig.write({"svc": {"cmd": crash_once(rig), "restart": "on-failure", "backoff": 0.1,
                       "min_uptime": 0.1, "ready": {"log": "up and ready"}}})

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started", r
    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["exit_codes"] == [4]
    rig.stop()


# --- item 7: a torn heartbeat read is not a freeze ---------------------------------------------


def torn_service(rig: Rig, **flags: float) -> dict:
    hb = rig.root / "hb.json"
    extra = [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", v)]
    return {"svc": {"cmd": rig.script("torn_heartbeat.py", "--file", hb, "--every", 0.2, "--torn", 0.1,
                                      *extra, python=sys.executable),
                    "restart": "always", "backoff": 0.1, "min_uptime": 0.1,
                    "heartbeat": {"file": str(hb), "field": "unix_ts", "max_age": 1.0},
                    "ready": {"log": "^ready"}}}


def test_a_heartbeat_written_non_atomically_is_read_torn_but_never_counted_as_frozen(rig: Rig) -> None:
    rig.write(torn_service(rig))
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    child = rig.status("svc")["svc"]["pid"]

    # several separate runs of torn reads (each logged once), every one shorter than max_age
    wait_until(lambda: rig.supervisor_log("svc").read_text().count("heartbeat unreadable") >= 4,
               timeout=60)

    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["pid"] == child and st["restarts"] == 0, st
    assert "frozen:" not in rig.supervisor_log("svc").read_text()
    rig.stop()


def test_a_heartbeat_that_stays_torn_for_max_age_is_frozen_and_restarted(rig: Rig) -> None:
    rig.write(torn_service(rig, stick_after=0.5))
    assert by_name(rig.start())["svc"]["outcome"] == "started"

    wait_until(lambda: (rig.status("svc")["svc"]["restarts"] or 0) >= 1, timeout=30)

    words = rig.supervisor_log("svc").read_text()
    assert "frozen: heartbeat" in words and "on every read for" in words
    rig.stop()


# --- item 9: max_restarts ---------------------------------------------------------------------


def freezing_worker(rig: Rig, max_restarts: int, freeze_after: float | None) -> dict:
    hb = rig.root / "hb.json"
    flags = f" --freeze-after {freeze_after}" if freeze_after is not None else ""
    return {"svc": {"cmd": f"{sys.executable} {rig.checkout}/demo/worker.py --heartbeat {hb}"
                           f" --interval 0.1{flags}",
                    "restart": "always", "backoff": 0.1, "min_uptime": 0.1, "max_restarts": max_restarts,
                    "heartbeat": {"file": str(hb), "field": "unix_ts", "max_age": 0.8},
                    "ready": {"log": "worker ready"}}}


def test_a_service_that_keeps_freezing_after_min_uptime_stops_at_max_restarts(rig: Rig) -> None:
    rig.write(freezing_worker(rig, max_restarts=2, freeze_after=0.3))
    assert by_name(rig.start())["svc"]["outcome"] == "started"

    wait_until(lambda: rig.status("svc")["svc"]["state"] == "fatal", timeout=60)

    st = rig.status("svc")["svc"]
    assert st["restarts"] == 2, st
    assert "restart cap: restarted 2 times (max_restarts 2" in st["detail"]
    assert "CRITICAL svc: restarted 2 times (max_restarts 2)" in rig.supervisor_log("svc").read_text()
    rig.wait_none_running(timeout=10)


def test_a_service_under_its_max_restarts_keeps_being_restarted(rig: Rig) -> None:
    rig.write(freezing_worker(rig, max_restarts=2, freeze_after=None))
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    child = rig.status("svc")["svc"]["pid"]
    os.kill(child, signal.SIGKILL)

    wait_until(lambda: rig.status("svc")["svc"]["pid"] not in (None, child), timeout=20)

    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["restarts"] == 1
    rig.stop()


# --- item 10: port pre-flight on the supervisor's restarts -------------------------------------


def test_a_restart_never_spawns_into_a_port_held_by_another_process_and_names_it(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0, "--port", "${port}"),
                       "port": rig.api_port, "restart": "always", "backoff": 0.3,
                       "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    supervisor, child = rig.state("svc")["pid"], rig.status("svc")["svc"]["pid"]
    # hold the supervisor still while the port changes hands, so the stranger surely wins it
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(child, signal.SIGKILL)
        wait_for_port_closed(rig.api_port)
        holder, _ = rig.tracker.start([sys.executable, HOLDER, "--port", str(rig.api_port)])
        wait_for_port(rig.api_port)
    finally:
        os.kill(supervisor, signal.SIGCONT)

    wait_until(lambda: f"held by pid {holder.pid}" in (rig.status("svc")["svc"].get("last_reason") or ""),
               timeout=20)
    st = rig.status("svc")["svc"]
    assert st["state"] == "backoff", st
    assert f"port {rig.api_port} is held by pid {holder.pid} (" in st["detail"]
    assert "port_holder.py" in st["detail"]
    words = rig.supervisor_log("svc").read_text()
    assert f"not starting it: port {rig.api_port} is held by pid {holder.pid}" in words
    assert "Address already in use" not in rig.log("svc").read_text()
    assert rig.pids_of("late_ready.py") == [], "nothing was spawned into the held port"
    assert holder.poll() is None and pid_alive(supervisor)
    plain = rig.inv_cmd("status")
    assert plain.returncode == 7, plain.stdout + plain.stderr  # backoff: should run, does not
    assert f"port {rig.api_port} is held by pid {holder.pid}" in plain.stdout

    # its healthy twin: the port comes free, the next try starts the service
    holder.kill()
    holder.wait(5)
    wait_until(lambda: rig.status("svc")["svc"]["state"] == "running", timeout=30)
    assert rig.status("svc")["svc"]["pid"] != child
    rig.stop()


def test_verify_heartbeat_reads_a_torn_heartbeat_again_and_passes(rig: Rig) -> None:
    rig.write(torn_service(rig))
    assert by_name(rig.start())["svc"]["outcome"] == "started"

    # half of the time the file is torn: every one of these would have had a fair chance to fail
    reports = [verify.heartbeat(rig.agent, ["svc"]) for _ in range(8)]

    assert all(r.ok for r in reports), [r.checks[0]["detail"] for r in reports]
    rig.stop()


def test_verify_heartbeat_fails_a_heartbeat_that_stays_torn(rig: Rig) -> None:
    rig.write(torn_service(rig, stick_after=0))
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    wait_until(lambda: "heartbeat unreadable" in rig.supervisor_log("svc").read_text(), timeout=20)

    report = verify.heartbeat(rig.agent, ["svc"])

    assert not report.ok
    assert "unreadable" in report.checks[0]["detail"] and "on every read for" in report.checks[0]["detail"]
    rig.stop()
