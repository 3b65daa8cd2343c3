"""manager = "systemd": start/stop/status through systemctl with the same gates, against a real
systemd (the booted box), over SSH."""

from __future__ import annotations

from ops import control
from tests.harness import wait_until
from tests.systemd.unitrig import UnitScene


def test_start_passes_journal_port_and_health_gates_and_status_shows_the_unit(scene: UnitScene) -> None:
    name = scene.name("web")
    unit = scene.unit(name, "--port", "18081", "--ready", "web-ready")
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "port": 18081,
                "ready": {"log": "web-ready"},
                "health": {"url": "http://127.0.0.1:18081/health", "body": "ok"},
            }
        }
    )
    with scene.session() as s:
        started = control.start(s, [name])
        assert started.ok, started.services
        r = started.services[0]
        assert r["outcome"] == "started"
        assert sorted(g["name"] for g in r["gates"]) == ["health", "log", "port"]
        main = int(scene.show(unit, "MainPID")["MainPID"])
        assert r["pid"] == main
        st = control.status(s, [name])[0]
        assert st["state"] == "running" and st["pid"] == main and st["port_ok"] is True
        assert st["health"]["ok"] is True
        assert st["invocation_id"] == scene.show(unit, "InvocationID")["InvocationID"]
        assert st["enabled"] == "disabled"
        again = control.start(s, [name]).services[0]
        assert again["outcome"] == "already-running"
        stopped = control.stop(s, [name])
        assert stopped.ok and stopped.services[0]["outcome"] == "stopped", stopped.services
        assert scene.show(unit, "ActiveState")["ActiveState"] == "inactive"
        assert scene.cgroup_pids(unit) == set()
        st = control.status(s, [name])[0]
        assert st["state"] == "stopped" and st["detail"] == "stopped by `stop`"


def test_a_unit_that_crashes_fails_its_gate_with_exit_code_and_journal_lines(scene: UnitScene) -> None:
    name = scene.name("crash")
    unit = scene.unit(name, "--crash", "7")
    scene.write_inventory(
        {name: {"manager": "systemd", "unit": unit, "ready": {"log": "app ready", "timeout": 20}}}
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed", r
    assert r["exit_code"] == 7
    assert "left the active state" in r["detail"], r["detail"]
    assert any("fatal: cannot start" in ln for ln in r["log_tail"]), r["log_tail"]
    assert scene.cgroup_pids(unit) == set()


def test_the_log_gate_reads_only_lines_of_this_start(scene: UnitScene) -> None:
    """The ready line of the previous run is in the journal; a start whose process never writes it
    again must fail at the log gate (cursor taken before the start), and leave nothing running."""
    name = scene.name("stale")
    unit = scene.unit(name, "--ready", "stale-ready")
    scene.write_inventory({name: {"manager": "systemd", "unit": unit, "ready": {"log": "stale-ready"}}})
    with scene.session() as s:
        assert control.start(s, [name]).ok
        assert control.stop(s, [name]).ok
    # same unit, now never ready: the old line must not count
    scene.unit(name, "--ready", "something-else")
    scene.write_inventory(
        {name: {"manager": "systemd", "unit": unit, "ready": {"log": "stale-ready", "timeout": 3}}}
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed" and r["failed_gate"] == "log", r
    assert "timed out" in r["detail"]
    assert scene.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed")


def test_health_gate_fails_on_a_500_and_the_unit_is_stopped(scene: UnitScene) -> None:
    name = scene.name("sick")
    unit = scene.unit(name, "--port", "18082", "--health-status", "500")
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "port": 18082,
                "health": {"url": "http://127.0.0.1:18082/health"},
                "ready": {"timeout": 3},
            }
        }
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed" and r["failed_gate"] == "health", r
    assert "500" in r["detail"]
    assert scene.cgroup_pids(unit) == set()


def test_port_gate_needs_the_port_held_by_the_units_cgroup(scene: UnitScene) -> None:
    """A unit that never listens fails its port gate; a port someone else holds refuses the start
    at once, naming the holder, which is left alone."""
    name = scene.name("portless")
    unit = scene.unit(name, "--delay", "0")
    scene.write_inventory(
        {name: {"manager": "systemd", "unit": unit, "port": 18083, "ready": {"timeout": 3}}}
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed" and r["failed_gate"] == "port", r
    assert "timed out" in r["detail"] and "port 18083: nothing listening" in r["detail"], r
    assert scene.cgroup_pids(unit) == set()

    holder = scene.unit(scene.name("holder"), "--port", "18083")
    scene.box.run(["systemctl", "start", holder])
    wait_until(
        lambda: scene.box.run(["sh", "-c", "ss -ltn | grep -q ':18083 '"], check=False).returncode == 0,
        20,
        message="the holder to listen",
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed" and r["failed_gate"] == "port", r
    assert f"port 18083 ({name}) is already held by pid" in r["detail"], r
    assert scene.show(unit, "ActiveState")["ActiveState"] == "inactive"  # not even tried
    assert scene.show(holder, "ActiveState")["ActiveState"] == "active"


def test_start_refuses_when_a_copy_runs_outside_the_unit_and_leaves_it_alone(scene: UnitScene) -> None:
    name = scene.name("twin")
    unit = scene.unit(name, "--ready", "twin-up")
    by_hand = scene.unit(scene.name("byhand"), "--ready", "twin-up")  # same program, another cgroup
    scene.box.run(["systemctl", "start", by_hand])
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "ready": {"log": "twin-up"},
                "match": f"{scene.dir}/app\\.py",
            }
        }
    )
    with scene.session() as s:
        r = control.start(s, [name]).services[0]
    assert r["outcome"] == "failed" and "already running outside" in r["detail"], r
    assert "not signalled" in r["detail"]
    assert scene.show(unit, "ActiveState")["ActiveState"] == "inactive"
    assert scene.show(by_hand, "ActiveState")["ActiveState"] == "active"


def test_status_maps_auto_restart_to_backoff_and_failed_to_fatal(scene: UnitScene) -> None:
    looping = scene.name("loop")
    loop_unit = scene.unit(
        looping,
        "--crash",
        "3",
        restart="always",
        extra="RestartSec=3\n",
        unit_extra="StartLimitIntervalSec=0\n",
    )
    dead = scene.name("dead")
    dead_unit = scene.unit(dead, "--crash", "7")
    limited = scene.name("limited")
    limited_unit = scene.unit(
        limited, "--crash", "4", restart="always", unit_extra="StartLimitIntervalSec=60\nStartLimitBurst=2\n"
    )
    scene.write_inventory(
        {n: {"manager": "systemd", "unit": f"{n}.service"} for n in (looping, dead, limited)}
    )
    for unit in (loop_unit, dead_unit, limited_unit):
        scene.box.run(["systemctl", "start", "--no-block", unit])
    wait_until(
        lambda: scene.show(loop_unit, "NRestarts")["NRestarts"] not in ("", "0"),
        30,
        message="the crash loop to be restarted once",
    )
    wait_until(
        lambda: scene.show(dead_unit, "ActiveState")["ActiveState"] == "failed",
        30,
        message=f"{dead_unit} to fail",
    )
    wait_until(
        lambda: scene.show(limited_unit, "ActiveState")["ActiveState"] == "failed",
        30,
        message=f"{limited_unit} to hit its start limit",
    )
    with scene.session() as s:
        by_name = {r["name"]: r for r in control.status(s)}

    def in_backoff() -> bool:
        with scene.session() as s:
            by_name[looping] = control.status(s, [looping])[0]
        return by_name[looping]["state"] == "backoff"

    wait_until(in_backoff, 30, interval=0.2, message="the crash loop to be seen between two tries")
    b = by_name[looping]
    assert b["restarts"] >= 1 and b["last_exit"] == 3, b
    assert "next try in" in b["detail"] and "exit code 3" in b["detail"], b
    f = by_name[dead]
    assert (f["state"], f["detail"]) == ("fatal", "failed: Result=exit-code, exit code 7"), f
    limit = by_name[limited]
    assert (limit["state"], limit["detail"]) == (
        "fatal",
        "failed: Result=exit-code, exit code 4 after 2 restart(s)",
    )


def test_a_user_unit_of_a_plain_user_without_sudo(sdbox, tmp_path) -> None:  # type: ignore[no-untyped-def]
    scene = UnitScene(sdbox, tmp_path, alias="sdbox-user")
    name = scene.name("mine")
    unit = scene.user_unit(name, "--ready", "user-unit-up")
    scene.write_inventory(
        {name: {"manager": "systemd", "scope": "user", "unit": unit, "ready": {"log": "user-unit-up"}}}
    )
    try:
        r = scene.inv_json("start", code=0)["hosts"][0]["services"][0]
        assert r["outcome"] == "started" and [g["name"] for g in r["gates"]] == ["log"], r
        st = scene.inv_json("status", code=0)["hosts"][0]["services"][0]
        assert st["state"] == "running" and st["pid"] == r["pid"], st
        owner = sdbox.run(["stat", "-c", "%U", f"/proc/{r['pid']}"]).stdout.strip()
        assert owner == "opsuser"
        assert scene.inv_json("stop", code=0)["hosts"][0]["services"][0]["outcome"] == "stopped"
    finally:
        scene.box.ssh("sdbox-user", f"XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user stop {unit}")
