"""`inv deploy` to the systemd box: a persisted service and a manager = "systemd" unit are
stopped and started through systemctl with their gates, verified (verify.all on the cgroup),
and the dry-run plan names the systemctl actions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import git
from tests.systemd.unitrig import APP, REPO, UnitScene


def run_inv(scene: UnitScene, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, OPS_INVENTORY=str(scene.inv_path), OPS_JOURNAL=str(scene.local_dir / "journal.jsonl")
    )
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def test_deploy_drives_unit_services_through_systemctl(scene: UnitScene, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text(APP)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    checkout = f"{scene.dir}/checkout"
    web, unit_svc = scene.name("web"), scene.name("side")
    side_unit = scene.unit(unit_svc, "--ready", "side-up", restart="always")
    scene.units.append(f"{web}.service")
    scene.write_inventory(
        {
            web: {
                "cmd": "/usr/bin/python3 app.py --port 18121 --ready web-up",
                "persist": True,
                "port": 18121,
                "ready": {"log": "web-up"},
                "restart": "always",
                "health": {"url": "http://127.0.0.1:18121/health", "body": "ok"},
            },
            unit_svc: {
                "manager": "systemd",
                "unit": side_unit,
                "ready": {"log": "side-up"},
                "after": [web],
                "checks": ["tree", "restart", "orphans"],
            },
        },
        path=checkout,
    )
    plan = run_inv(scene, repo, "deploy", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"systemd: write {web}.service from the inventory, daemon-reload, enable" in plan.stdout
    assert f"systemd: systemctl start {web}.service" in plan.stdout
    assert f"systemd: systemctl start {side_unit}" in plan.stdout

    first = run_inv(scene, repo, "deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    web_props = scene.show(f"{web}.service", "ActiveState", "UnitFileState", "MainPID", "InvocationID")
    assert web_props["ActiveState"] == "active" and web_props["UnitFileState"] == "enabled", web_props
    side_before = scene.show(side_unit, "InvocationID")["InvocationID"]

    (repo / "NOTE").write_text("second\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    plan = run_inv(scene, repo, "deploy", "--dry-run")
    assert f"would signal {web} pid {web_props['MainPID']}: systemctl stop {web}.service" in plan.stdout, (
        plan.stdout
    )
    assert f"systemd: systemctl stop {side_unit}" in plan.stdout
    second = run_inv(scene, repo, "deploy")
    assert second.returncode == 0, second.stdout + second.stderr
    after = scene.show(f"{web}.service", "InvocationID", "ActiveState")
    assert after["ActiveState"] == "active" and after["InvocationID"] != web_props["InvocationID"]
    assert scene.show(side_unit, "InvocationID")["InvocationID"] != side_before  # restarted by the deploy,
    # then killed once more by its declared verify.restart check, and brought back by systemd
    assert scene.show(side_unit, "NRestarts")["NRestarts"] == "1"
