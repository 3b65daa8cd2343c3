"""The spawn-loop runbook's systemd steps, each ONE `inv` command against a real unit on the
booted systemd box: stop + disable, enable + start, follow the journal, watch the process count.
Plus sudo: a system unit driven by a user that is not root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness import read_text, wait_until
from tests.systemd.unitrig import REPO, UnitScene
from tests.systemd_rig import SystemdBox


def coordinator(scene: UnitScene, spawn: int, every: float = 0.4) -> tuple[str, str]:
    name = scene.name("coord")
    unit = scene.unit(name, "--spawn", str(spawn), "--every", str(every), "--ready", "coordinator-up")
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "ready": {"log": "coordinator-up", "timeout": 30},
                "match": f"{scene.dir}/app\\.py --child",
                "max_instances": 3,
            }
        }
    )
    return name, unit


def test_runbook_disable_now_then_enable_now_are_one_command_each(scene: UnitScene) -> None:
    name, unit = coordinator(scene, spawn=1)
    scene.box.run(["systemctl", "enable", "--now", unit])

    off = scene.inv_json("disable", "--now", "--service", name, code=0)
    r = off["hosts"][0]["services"][0]
    assert r["outcome"] == "stopped" and r["enabled"] == "disabled", r
    assert scene.show(unit, "ActiveState", "UnitFileState") == {
        "ActiveState": "inactive",
        "UnitFileState": "disabled",
    }
    assert scene.cgroup_pids(unit) == set()

    on = scene.inv_json("enable", "--now", "--service", name, code=0)
    r = on["hosts"][0]["services"][0]
    assert r["outcome"] == "started" and r["enabled"] == "enabled", r
    assert [g["name"] for g in r["gates"]] == ["log"]
    assert scene.show(unit, "ActiveState", "UnitFileState") == {
        "ActiveState": "active",
        "UnitFileState": "enabled",
    }

    table = scene.inv_cmd("status")
    assert table.returncode == 0, table.stdout + table.stderr
    header, row = table.stdout.splitlines()[0], [ln for ln in table.stdout.splitlines() if name in ln][0]
    assert header.split()[-1] == "boot" and row.split()[-1] == "enabled", table.stdout
    assert " running " in row


def test_runbook_follow_the_journal_streams_new_lines_until_interrupted(
    scene: UnitScene, tmp_path: Path
) -> None:
    name = scene.name("ticker")
    unit = scene.unit(name, "--tick", "0.3", "--ready", "ticker-up")
    scene.write_inventory(
        {
            name: {
                "manager": "systemd",
                "unit": unit,
                "ready": {"log": "ticker-up"},
                "env_file": f"{scene.dir}/secret.env",
            }
        }
    )
    assert scene.inv_cmd("start").returncode == 0
    last = scene.inv_cmd("logs", name, "-n", "500")
    assert last.returncode == 0 and "ticker-up" in last.stdout, last.stdout + last.stderr

    out_path = tmp_path / "follow.out"
    env = dict(os.environ, OPS_INVENTORY=str(scene.inv_path))
    with open(out_path, "wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "invoke", "logs", name, "-n", "0", "--follow"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: read_text(out_path).count("tick ") >= 2,
            30,
            interval=0.1,
            message="journal lines to be streamed",
        )
    finally:
        follower.terminate()
        follower.wait(20)
    text = read_text(out_path)
    assert re.search(r"^tick \d+ \*\*\*$", text, re.MULTILINE), text  # the env_file's token, redacted
    assert scene.token not in text and "Traceback" not in text
    # the agent's journalctl -f went with the client
    wait_until(
        lambda: scene.box.run(["pgrep", "-f", f"journalctl.*{unit}"], check=False).returncode == 1,
        20,
        message="the journal follower to exit",
    )


def test_runbook_watch_fails_on_a_growing_process_count_and_passes_a_steady_one(scene: UnitScene) -> None:
    name, unit = coordinator(scene, spawn=6, every=0.6)
    scene.box.run(["systemctl", "start", unit])
    loop = scene.inv_json("verify.watch", "--service", name, "--seconds", "6", code=1)
    watch = [c for c in loop["hosts"][0]["checks"] if c["name"] == "watch"][0]
    assert not watch["ok"], watch
    assert "keeps growing" in watch["detail"] or "more than max_instances" in watch["detail"], watch
    scene.box.run(["systemctl", "stop", unit])

    steady, steady_unit = coordinator(scene, spawn=1)
    scene.box.run(["systemctl", "start", steady_unit])
    wait_until(lambda: len(scene.cgroup_pids(steady_unit)) == 2, 20, message="the one worker to spawn")
    ok = scene.inv_json("verify.watch", "--service", steady, "--seconds", "3", code=0)
    watch = [c for c in ok["hosts"][0]["checks"] if c["name"] == "watch"][0]
    assert watch["ok"] and set(watch["counts"]) == {1}, watch


def test_a_system_unit_through_sudo_for_a_sudoer_and_a_clear_error_without_the_right(
    sdbox: SystemdBox, tmp_path: Path
) -> None:
    if not sdbox.has_sudo:
        import pytest

        problem = "sudo is not installed and its package could not be fetched (apt-get download sudo)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must not skip tests: {problem}", pytrace=False)
        pytest.skip(problem)
    admin = UnitScene(sdbox, tmp_path / "admin", alias="sdbox-admin")
    plain = UnitScene(sdbox, tmp_path / "plain", alias="sdbox-user")
    (tmp_path / "admin").mkdir(exist_ok=True)
    (tmp_path / "plain").mkdir(exist_ok=True)
    try:
        name = admin.name("sudoed")
        unit = admin.unit(name, "--ready", "sudoed-up", user="opsadmin")
        admin.write_inventory({name: {"manager": "systemd", "unit": unit, "ready": {"log": "sudoed-up"}}})
        started = admin.inv_json("start", code=0)["hosts"][0]["services"][0]
        assert started["outcome"] == "started", started
        assert [g["name"] for g in started["gates"]] == ["log"]  # the journal, read through sudo -n

        plain.write_inventory({name: {"manager": "systemd", "unit": unit}})
        refused = plain.inv_cmd("stop", timeout=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "needs root: sudo needs a password" in refused.stdout, refused.stdout
        assert "NOPASSWD" in refused.stdout
        assert admin.show(unit, "ActiveState")["ActiveState"] == "active"  # untouched
        assert admin.inv_json("stop", code=0)["hosts"][0]["services"][0]["outcome"] == "stopped"
    finally:
        admin.cleanup()
        plain.cleanup()
