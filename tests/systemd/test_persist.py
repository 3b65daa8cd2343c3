"""`inv persist` / `persist = true`: the tool writes a unit from the inventory for a service it
used to run itself, enables it, and manages it as a unit from then on; the service comes back
after the box reboots. `--dry-run` prints the unit; a host without systemd gets the alternative."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import wait_until
from tests.integration.rig import toml_tables
from tests.systemd.unitrig import UnitScene
from tests.systemd_rig import SystemdBox


def tool_service(scene: UnitScene, port: int, **extra: object) -> str:
    name = scene.name("keeper")
    scene.write_inventory(
        {
            name: {
                "cmd": f"/usr/bin/python3 app.py --port {port} --ready persisted-up",
                "port": port,
                "ready": {"log": "persisted-up"},
                "restart": "on-failure",
                "backoff": 0.5,
                "env": {"MODE": "prod"},
                "env_file": "secret.env",
                "health": {"url": f"http://127.0.0.1:{port}/health", "body": "ok"},
                **extra,
            }
        }
    )
    return name


def test_persist_writes_the_unit_hands_over_and_it_survives_reboots(
    private_sdbox: SystemdBox, tmp_path: Path
) -> None:
    scene = UnitScene(private_sdbox, tmp_path)
    name = tool_service(scene, 18101)
    unit_file = f"/etc/systemd/system/{name}.service"

    plan = scene.inv_cmd("persist", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"# box: {unit_file}" in plan.stdout
    for line in (
        "ExecStart=/usr/bin/python3 app.py --port 18101 --ready persisted-up",
        f"WorkingDirectory={scene.dir}",
        f"EnvironmentFile={scene.dir}/secret.env",
        'Environment="MODE=prod"',
        "Restart=on-failure",
        "RestartSec=0.5s",
        "StartLimitBurst=5",
        "KillMode=control-group",
    ):
        assert line + "\n" in plan.stdout, (line, plan.stdout)
    assert scene.token not in plan.stdout
    assert private_sdbox.run(["test", "-e", unit_file], check=False).returncode == 1  # nothing written

    started = scene.inv_json("start", code=0)["hosts"][0]["services"][0]
    tool_pid = started["pid"]
    refused = scene.inv_json("enable", "--service", name, code=1)["hosts"][0]["services"][0]
    assert "is run by the tool, not by systemd" in refused["detail"] and "inv persist" in refused["detail"]
    assert scene.show(f"{name}.service", "LoadState")["LoadState"] == "not-found"  # run by the tool

    moved = scene.inv_json("persist", code=0)["hosts"][0]["services"][0]
    assert moved["outcome"] == "started", moved
    assert sorted(g["name"] for g in moved["gates"]) == ["health", "log", "port"]
    unit = f"{name}.service"
    props = scene.show(unit, "ActiveState", "UnitFileState", "MainPID")
    assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled", props
    main = int(props["MainPID"])
    assert (
        main != tool_pid
        and private_sdbox.run(["test", "-e", f"/proc/{tool_pid}"], check=False).returncode == 1
    )
    argv = private_sdbox.run(["cat", f"/proc/{main}/cmdline"]).stdout
    environ = private_sdbox.run(["cat", f"/proc/{main}/environ"]).stdout
    assert scene.token not in argv and f"APP_TOKEN={scene.token}" in environ  # EnvironmentFile=, not argv

    # from now on the host knows it as the unit: disable / enable work on it by name
    off = scene.inv_json("disable", "--service", name, code=0)["hosts"][0]["services"][0]
    assert off["outcome"] == "disabled" and off["enabled"] == "disabled", off
    assert (
        scene.inv_json("enable", "--service", name, code=0)["hosts"][0]["services"][0]["enabled"] == "enabled"
    )

    status = scene.inv_json("status", code=0)["hosts"][0]["services"][0]
    assert status["state"] == "running" and status["pid"] == main and status["enabled"] == "enabled"
    invocation = status["invocation_id"]

    for clean in (True, False):  # systemctl poweroff, then a power cut (PID 1 killed)
        private_sdbox.reboot(clean=clean)
        wait_until(
            lambda: scene.show(unit, "ActiveState")["ActiveState"] == "active",
            30,
            message=f"{unit} to come back after the reboot",
        )
        back = scene.inv_json("status", code=0)["hosts"][0]["services"][0]
        # a new invocation (the pid may be the same number: every boot is a fresh pid namespace)
        assert back["state"] == "running" and back["invocation_id"] not in (None, invocation), back
        assert back["pid"] == int(scene.show(unit, "MainPID")["MainPID"])
        assert back["port_ok"] is True and back["health"]["ok"] is True, back
        invocation = back["invocation_id"]

    stop = scene.inv_json("stop", code=0)["hosts"][0]["services"][0]  # managed as the unit now
    assert stop["outcome"] == "stopped" and stop["unit"] == unit, stop
    assert scene.show(unit, "ActiveState")["ActiveState"] == "inactive"


def test_persist_true_writes_enables_and_starts_the_unit_at_start(scene: UnitScene) -> None:
    name = tool_service(scene, 18102, persist=True)
    unit = f"{name}.service"
    scene.units.append(unit)
    r = scene.inv_json("start", code=0)["hosts"][0]["services"][0]
    assert r["outcome"] == "started" and r["unit"] == unit, r
    assert scene.show(unit, "UnitFileState")["UnitFileState"] == "enabled"
    text = scene.box.run(["cat", f"/etc/systemd/system/{unit}"]).stdout
    assert text.startswith("# Written by ops (inv persist)")
    # a unit the tool did not write is never overwritten
    other = scene.name("foreign")
    scene.unit(other, "--ready", "x")
    scene.write_inventory({other: {"cmd": "/usr/bin/python3 app.py", "persist": True}})
    refused = scene.inv_json("start", code=1)["hosts"][0]["services"][0]
    assert "was not written by this tool; not overwriting it" in refused["detail"], refused


def test_persist_on_a_host_without_systemd_offers_a_crontab_line(tmp_path: Path) -> None:
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("this machine runs systemd: the test would write a real unit")
    inv = tmp_path / "hosts.toml"
    inv.write_text(
        toml_tables(
            {
                "hosts.here": {
                    "local": True,
                    "path": str(tmp_path),
                    "state_dir": str(tmp_path / "state"),
                    "services": ["sleeper"],
                },
                "services.sleeper": {"cmd": "sleep 1000", "restart": "always"},
            }
        )
    )
    import subprocess
    import sys

    from tests.systemd.unitrig import REPO

    r = subprocess.run(
        [sys.executable, "-m", "invoke", "persist"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, OPS_INVENTORY=str(inv)),
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not run systemd" in r.stdout and "@reboot " in r.stdout and " supervise " in r.stdout, (
        r.stdout
    )
    assert "Traceback" not in r.stdout + r.stderr


def test_a_unit_service_on_a_host_without_systemd_is_a_clear_error(tmp_path: Path) -> None:
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("this machine runs systemd")
    import subprocess
    import sys

    from tests.systemd.unitrig import REPO

    inv = tmp_path / "hosts.toml"
    inv.write_text(
        toml_tables(
            {
                "hosts.here": {
                    "local": True,
                    "path": str(tmp_path),
                    "state_dir": str(tmp_path / "state"),
                    "services": ["unitsvc"],
                },
                "services.unitsvc": {"manager": "systemd"},
            }
        )
    )
    env = dict(os.environ, OPS_INVENTORY=str(inv))
    r = subprocess.run(
        [sys.executable, "-m", "invoke", "start"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "this host does not run systemd (no /run/systemd/system)" in r.stdout, r.stdout
    st = subprocess.run(
        [sys.executable, "-m", "invoke", "status"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert st.returncode == 8 and " unknown " in st.stdout and "does not run systemd" in st.stdout, st.stdout


def test_persist_as_a_sudoer_writes_a_system_unit_that_runs_as_that_user(
    sdbox: SystemdBox, tmp_path: Path
) -> None:
    if not sdbox.has_sudo:
        pytest.skip("no sudo in the box")
    scene = UnitScene(sdbox, tmp_path, alias="sdbox-admin")
    name = tool_service(scene, 18103, persist=True)
    unit = f"{name}.service"
    scene.units.append(unit)
    try:
        r = scene.inv_json("start", code=0)["hosts"][0]["services"][0]
        assert r["outcome"] == "started", r
        text = sdbox.run(["cat", f"/etc/systemd/system/{unit}"]).stdout
        assert "\nUser=opsadmin\n" in text
        assert sdbox.run(["stat", "-c", "%U", f"/proc/{r['pid']}"]).stdout.strip() == "opsadmin"
        assert scene.show(unit, "UnitFileState")["UnitFileState"] == "enabled"
    finally:
        scene.cleanup()


def test_persist_true_with_user_scope_writes_a_user_unit(sdbox: SystemdBox, tmp_path: Path) -> None:
    scene = UnitScene(sdbox, tmp_path, alias="sdbox-user")
    name = tool_service(scene, 18104, persist=True, scope="user")
    unit = f"{name}.service"
    try:
        r = scene.inv_json("start", code=0)["hosts"][0]["services"][0]
        assert r["outcome"] == "started", r
        path = f"/home/opsuser/.config/systemd/user/{unit}"
        assert "WantedBy=default.target" in sdbox.run(["cat", path]).stdout
        assert sdbox.run(["stat", "-c", "%U", f"/proc/{r['pid']}"]).stdout.strip() == "opsuser"
        enabled = scene.box.ssh(
            "sdbox-user", f"XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user is-enabled {unit}"
        ).stdout.strip()
        assert enabled == "enabled"
        assert scene.inv_json("stop", code=0)["hosts"][0]["services"][0]["outcome"] == "stopped"
    finally:
        scene.box.ssh(
            "sdbox-user", f"XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user disable --now {unit}"
        )
        scene.cleanup()
