"""Stop: TERM the group, wait, KILL; sweep orphans by pattern; prove none left; supervisors first;
explicit stops recorded; a reused pid never signalled. Real services, on `local` and over sshd."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import kill_quietly, pid_alive, port_open, process_ids, wait_until
from tests.integration.rig import Rig, by_name, local_rig_fixture, rig_fixture  # noqa: F401


def test_service_ignoring_term_is_killed_after_stop_timeout(rig: Rig) -> None:
    rig.write(
        {"svc": {"cmd": rig.script("ignore_term.py"), "ready": {"log": "ignoring TERM"}, "stop_timeout": 0.5}}
    )
    started = by_name(rig.start())["svc"]
    assert started["outcome"] == "started"

    t = time.monotonic()
    r = by_name(rig.stop())["svc"]
    took = time.monotonic() - t

    assert r["outcome"] == "stopped"
    assert r["escalated"] is True
    assert "escalated to SIGKILL" in r["detail"]
    assert took >= 0.5, "KILL only after stop_timeout"
    assert not pid_alive(started["pid"])
    rig.wait_none_running(timeout=0)


def test_well_behaved_service_stops_on_term_without_escalation(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    pid = by_name(rig.start())["svc"]["pid"]

    r = by_name(rig.stop())["svc"]

    assert r["outcome"] == "stopped" and r["escalated"] is False
    assert r["signalled"] == [pid]
    assert not pid_alive(pid)


def _orphan_maker(rig: Rig) -> dict:
    return {
        "cmd": rig.script("orphan_maker.py"),
        "match": rig.pattern("orphan_maker.py"),  # catches the grandchild too ("... --grandchild")
        "ready": {"log": "grandchild ready"},
    }


def _grandchild(rig: Rig) -> int:
    text = rig.log("maker").read_text()
    return int(text.split("spawned grandchild pid ")[1].split()[0])


def test_stop_leaves_no_orphan_of_a_service_whose_grandchild_escaped_its_session(rig: Rig) -> None:
    rig.write({"maker": _orphan_maker(rig)})
    parent = by_name(rig.start())["maker"]["pid"]
    grandchild = _grandchild(rig)
    assert process_ids(grandchild)["sid"] != process_ids(parent)["sid"], "it did escape"

    r = by_name(rig.stop())["maker"]

    assert r["outcome"] == "stopped"
    assert grandchild in r["signalled"], "found as a descendant even outside the group"
    assert not pid_alive(grandchild) and not pid_alive(parent)
    rig.wait_none_running(timeout=0)


def test_orphans_left_by_a_dead_parent_carry_its_marker_and_are_stopped(rig: Rig) -> None:
    rig.write({"maker": _orphan_maker(rig)})
    parent = by_name(rig.start())["maker"]["pid"]
    grandchild = _grandchild(rig)
    os.kill(parent, signal.SIGKILL)  # behind the tool's back: the grandchild is now an orphan
    wait_until(lambda: not pid_alive(parent), 5)

    before = rig.status()["maker"]
    r = by_name(rig.stop())["maker"]

    assert before["state"] == "dead"
    assert f"pid {grandchild}" in before["detail"] and "not started by this tool" in before["detail"]
    assert r["outcome"] == "stopped"
    assert [o["pid"] for o in r["orphans"]] == [grandchild]
    assert "killed 1 orphan(s)" in r["detail"]
    assert not pid_alive(grandchild)
    rig.wait_none_running(timeout=0)


def test_stopping_the_daemon_alone_stops_its_api_child_first_and_frees_the_port(rig: Rig) -> None:
    rig.write(rig.demo())
    started = by_name(rig.start())
    api_pid, worker_pid = started["demo_api"]["pid"], started["demo_worker"]["pid"]
    port = rig.host.service("demo_api").port

    result = rig.stop("demo_daemon")

    assert result.ok, result.services
    assert [r["name"] for r in result.services] == ["demo_daemon", "demo_api"]  # supervisor first
    assert [r["outcome"] for r in result.services] == ["stopped", "stopped"]
    assert result.services[0]["escalated"] is False, "TERM was enough: each process got it once"
    assert not pid_alive(api_pid)
    assert not port_open(port)
    daemon_log = rig.log("demo_daemon").read_text()
    assert "daemon stopped" in daemon_log, daemon_log
    assert "restarting in" not in daemon_log, "the supervisor never got to respawn its child"
    assert pid_alive(worker_pid), "a service that was not asked to stop keeps running"
    states = {n: s["state"] for n, s in rig.status().items()}
    assert states == {"demo_daemon": "stopped", "demo_api": "stopped", "demo_worker": "running"}


def test_stop_all_goes_in_reverse_dependency_order_and_status_says_stopped(rig: Rig) -> None:
    rig.write(rig.demo())
    assert rig.start().ok

    result = rig.stop()

    assert result.ok, result.services
    # worker runs `after` the daemon, so it stops first; the daemon stops before its child.
    assert [r["name"] for r in result.services] == ["demo_worker", "demo_daemon", "demo_api"]
    rig.wait_none_running(timeout=0)
    assert not port_open(rig.host.service("demo_api").port)
    assert {s["state"] for s in rig.status().values()} == {"stopped"}
    assert rig.state("demo_daemon")["stopped_by"] == "user"
    again = rig.stop()
    assert [r["outcome"] for r in again.services] == ["not-running", "not-running", "stopped"]


def test_status_says_dead_when_the_process_was_killed_behind_the_tools_back(rig: Rig) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    pid = by_name(rig.start())["svc"]["pid"]

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5)

    st = rig.status()["svc"]
    assert st["state"] == "dead"
    assert f"pid {pid} is gone" in st["detail"]
    assert by_name(rig.stop())["svc"]["outcome"] == "not-running"
    assert rig.status()["svc"]["state"] == "stopped", "an explicit stop is recorded"


def _starttime(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


@pytest.mark.parametrize("differs", ["starttime", "boot_id"])
def test_pid_reused_by_another_process_is_never_signalled(rig: Rig, differs: str) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    stranger, _ = rig.tracker.start(["sleep", "300"])
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    forged = {
        "name": "svc",
        "pid": stranger.pid,
        "pgid": stranger.pid,
        "starttime": _starttime(stranger.pid),
        "boot_id": boot_id,
        "stopped": False,
    }
    if differs == "starttime":
        forged["starttime"] = str(int(forged["starttime"]) + 1)
    else:
        forged["boot_id"] = "00000000-0000-0000-0000-000000000000"
    state_file = rig.state_dir / "services" / "svc.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps(forged))

    st = rig.status()["svc"]
    r = by_name(rig.stop())["svc"]

    assert st["state"] != "running" and st["pid"] is None
    assert "pid reuse" in st["detail"]
    assert r["outcome"] == "not-running"
    assert r["signalled"] == []
    assert "not signalled" in r["detail"]
    assert stranger.poll() is None and pid_alive(stranger.pid), "the stranger is still alive"
    assert rig.state("svc")["stale"] is True
    assert rig.status()["svc"]["state"] == "stopped"


def test_start_after_a_stale_state_file_starts_a_fresh_copy(local_rig: Rig) -> None:
    rig = local_rig
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    stranger, _ = rig.tracker.start(["sleep", "300"])
    state_file = rig.state_dir / "services" / "svc.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps({"name": "svc", "pid": stranger.pid, "starttime": "1", "boot_id": "x"}))

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started" and r["pid"] != stranger.pid
    assert stranger.poll() is None
    rig.stop()
    kill_quietly(stranger.pid)


def test_stopping_the_child_alone_is_refused_while_its_supervisor_runs(rig: Rig) -> None:
    rig.write(rig.demo(), host_services=["demo_daemon"])
    api = by_name(rig.start())["demo_api"]["pid"]

    r = by_name(rig.stop("demo_api"))["demo_api"]

    assert r["outcome"] == "failed"
    assert "stop demo_daemon instead" in r["detail"]
    assert pid_alive(api), "the supervisor would only restart it"
    assert rig.stop().ok


def test_stop_sweeps_the_api_left_behind_by_a_supervisor_killed_behind_the_tools_back(rig: Rig) -> None:
    rig.write(rig.demo(), host_services=["demo_daemon"])
    started = by_name(rig.start())
    daemon, api = started["demo_daemon"]["pid"], started["demo_api"]["pid"]
    port = rig.host.service("demo_api").port
    os.kill(daemon, signal.SIGKILL)
    wait_until(lambda: not pid_alive(daemon), 5)

    status = rig.status()
    result = rig.stop()

    assert status["demo_daemon"]["state"] == "dead"
    assert status["demo_api"]["state"] == "unknown"
    detail = status["demo_api"]["detail"]
    assert f"not started by this tool, or escaped its tree, but running: pid {api}" in detail
    assert result.ok, result.services
    assert [o["pid"] for o in by_name(result)["demo_daemon"]["orphans"]] == [api]
    assert not pid_alive(api)
    assert not port_open(port)
    rig.wait_none_running(timeout=0)


def test_restart_replaces_every_process_and_passes_the_gates_again(rig: Rig) -> None:
    rig.write(rig.demo())
    before = by_name(rig.start())

    with rig.session() as s:
        from ops import control

        result = control.restart(s, ["demo_daemon"])

    assert result.ok, result.services
    assert [(r["phase"], r["name"], r["outcome"]) for r in result.services] == [
        ("stop", "demo_daemon", "stopped"),
        ("stop", "demo_api", "stopped"),
        ("start", "demo_daemon", "started"),
        ("start", "demo_api", "supervised"),
    ]
    after = {r["name"]: r for r in result.services if r["phase"] == "start"}
    for name in ("demo_daemon", "demo_api"):
        assert after[name]["pid"] != before[name]["pid"]
        assert not pid_alive(before[name]["pid"])
    assert pid_alive(before["demo_worker"]["pid"]), "restarting the daemon leaves the worker alone"
    rig.stop()


def test_stop_signal_hup_stops_a_service_with_default_handlers(rig: Rig) -> None:
    # The agent ignores SIGHUP for itself; the services it starts must not inherit that.
    rig.write(
        {
            "svc": {
                "cmd": rig.script("late_ready.py", "--delay", 0),
                "ready": {"log": "ready"},
                "stop_signal": "HUP",
                "stop_timeout": 1,
            }
        }
    )
    pid = by_name(rig.start())["svc"]["pid"]
    sig_ignored = int(Path(f"/proc/{pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
    assert not sig_ignored & (1 << (signal.SIGHUP - 1)), "SIGHUP ignored in the service"

    r = by_name(rig.stop())["svc"]

    assert (r["outcome"], r["escalated"]) == ("stopped", False)
    assert not pid_alive(pid)


def test_corrupt_state_file_is_reported_then_replaced_by_stop(local_rig: Rig) -> None:
    rig = local_rig
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0), "ready": {"log": "ready"}}})
    state_file = rig.state_dir / "services" / "svc.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text('{"pid": 12')  # a torn write by something else

    assert rig.status()["svc"] == {
        **rig.status()["svc"],
        "state": "unknown",
        "detail": "state file is corrupt",
    }
    assert rig.stop().ok
    assert rig.status()["svc"]["state"] == "stopped"
