"""verify.tree / verify.restart / verify.orphans for unit services: the unit's cgroup is the
evidence, systemd's Restart= must bring back a new invocation that passes the gates. Each check is
shown failing when the thing it checks is broken, next to its passing twin."""

from __future__ import annotations

from typing import Any

from tests.harness import wait_until
from tests.systemd.unitrig import UnitScene


def web(scene: UnitScene, port: int, restart: str = "always", **extra: Any) -> tuple[str, str]:
    name = scene.name("api")
    unit = scene.unit(name, "--port", str(port), "--ready", "api-ready", "--spawn", "1", restart=restart)
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "port": port,
                "ready": {"log": "api-ready"},
                "health": {"url": f"http://127.0.0.1:{port}/health", "body": "ok"},
                "match": f"{scene.dir}/app\\.py",
                **extra,
            }
        }
    )
    return name, unit


def check(out: dict[str, Any], name: str) -> dict[str, Any]:
    return [c for c in out["hosts"][0]["checks"] if c["name"] == name][0]


def test_verify_tree_shows_the_cgroup_and_fails_when_the_unit_is_down(scene: UnitScene) -> None:
    name, unit = web(scene, 18091)
    assert scene.inv_cmd("start").returncode == 0
    main = int(scene.show(unit, "MainPID")["MainPID"])
    ok = check(scene.inv_json("verify.tree", name, code=0), "tree")
    assert ok["pid"] == main and ok["unit"] == unit, ok
    assert f"main pid {main}, 2 process(es) in its cgroup" in ok["detail"]
    assert any("--child" in line for line in ok["tree"]), ok["tree"]

    scene.box.run(["systemctl", "stop", unit])
    down = check(scene.inv_json("verify.tree", name, code=1), "tree")
    assert down["detail"].startswith(f"{unit} is stopped"), down


def test_verify_orphans_finds_a_matching_process_outside_the_cgroup_and_leaves_it(scene: UnitScene) -> None:
    name, unit = web(scene, 18092)
    assert scene.inv_cmd("start").returncode == 0
    clean = check(scene.inv_json("verify.orphans", code=0), "orphans")
    assert "none outside the cgroup" in clean["detail"], clean
    # the same program started by hand, outside the unit (another cgroup): an orphan
    stray = scene.unit(scene.name("stray"), "--child")
    scene.box.run(["systemctl", "start", stray])
    stray_pid = int(scene.show(stray, "MainPID")["MainPID"])
    found = check(scene.inv_json("verify.orphans", code=1), "orphans")
    assert [o["pid"] for o in found["offenders"]] == [stray_pid], found
    assert f"outside the cgroup of {unit}" in found["detail"]
    # stop does not kill what is not provably the unit's: it reports it
    stop = scene.inv_json("stop", code=1)["hosts"][0]["services"][0]
    assert "outside its cgroup" in stop["detail"] and "not signalled" in stop["detail"], stop
    assert scene.show(stray, "ActiveState")["ActiveState"] == "active"


def test_verify_restart_kills_the_main_pid_and_systemd_brings_back_a_new_invocation(scene: UnitScene) -> None:
    name, unit = web(scene, 18093, checks=["tree", "restart", "orphans"])
    assert scene.inv_cmd("start").returncode == 0
    before = scene.show(unit, "MainPID", "InvocationID")
    r = check(scene.inv_json("verify.restart", name, "--timeout", "30", code=0), "restart")
    after = scene.show(unit, "MainPID", "InvocationID", "NRestarts")
    assert r["old_pid"] == int(before["MainPID"]) and r["new_pid"] == int(after["MainPID"]), r
    assert after["InvocationID"] != before["InvocationID"] and r["new_invocation_id"] == after["InvocationID"]
    assert after["NRestarts"] == "1"
    assert sorted(g["name"] for g in r["gates"]) == ["health", "log", "port"], r["gates"]
    # verify.all (deploy's verify step) runs the declared checks on the unit
    every = scene.inv_json("verify.all", code=0)
    assert [c["name"] for c in every["hosts"][0]["checks"]] == ["tree", "restart", "orphans"]


def test_verify_restart_refuses_a_unit_with_restart_no_and_fails_when_it_does_not_come_back(
    scene: UnitScene,
) -> None:
    name, unit = web(scene, 18094, restart="no")
    assert scene.inv_cmd("start").returncode == 0
    main = scene.show(unit, "MainPID")["MainPID"]
    refused = check(scene.inv_json("verify.restart", name, code=1), "restart")
    assert "Restart=no" in refused["detail"] and "not killed" in refused["detail"], refused
    assert scene.show(unit, "MainPID")["MainPID"] == main

    # comes back, but its health never passes: the new process is not healthy (port taken by nobody)
    name2 = scene.name("flaky")
    unit2 = scene.unit(name2, "--ready", "flaky-ready", restart="on-failure")
    scene.write_inventory(
        {name2: {"manager": "systemd", "unit": unit2, "ready": {"log": "flaky-ready"}, "port": 18095}}
    )
    # start without the port gate passing is impossible; start the unit by hand and kill it
    scene.box.run(["systemctl", "start", unit2])
    wait_until(lambda: scene.show(unit2, "ActiveState")["ActiveState"] == "active", 20)
    late = check(scene.inv_json("verify.restart", name2, "--timeout", "3", code=1), "restart")
    assert late["new_pid"] is not None and "port: port 18095: nothing listening" in late["detail"], late


def test_a_unit_that_supervises_a_child_service(scene: UnitScene) -> None:
    """children = [...] of a unit: the start waits for the child under the unit's main process,
    status and verify.tree find it there."""
    daemon, worker = scene.name("daemon"), scene.name("worker")
    unit = scene.unit(daemon, "--spawn", "1", "--ready", "daemon-up")
    scene.write_inventory(
        {
            daemon: {"manager": "systemd", "unit": unit, "ready": {"log": "daemon-up"}, "children": [worker]},
            worker: {"match": f"{scene.dir}/app\\.py --child"},
        }
    )
    started = scene.inv_json("start", code=0)["hosts"][0]["services"]
    top = [r for r in started if r["name"] == daemon][0]
    assert sorted(g["name"] for g in top["gates"]) == sorted([f"{worker}: child", "log"]), top
    child_pid = [p for p in scene.cgroup_pids(unit) if p != int(scene.show(unit, "MainPID")["MainPID"])][0]
    status = {s["name"]: s for s in scene.inv_json("status", code=0)["hosts"][0]["services"]}
    assert status[worker]["state"] == "running" and status[worker]["pid"] == child_pid, status[worker]
    tree = check(scene.inv_json("verify.tree", worker, code=0), "tree")
    assert tree["pid"] == child_pid, tree
    assert scene.inv_json("stop", code=0)["hosts"][0]["ok"]
    assert scene.cgroup_pids(unit) == set()
