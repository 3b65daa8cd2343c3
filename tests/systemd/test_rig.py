"""The systemd box itself: a real systemd 252 as PID 1 of its own namespaces, reached over SSH,
that can be rebooted on the same disk and never touches the machine's real root."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from tests.harness import pid_alive
from tests.systemd_rig import SystemdBox


def test_box_runs_systemd_as_pid1_and_answers_ssh(sdbox: SystemdBox) -> None:
    done = sdbox.ssh("sdbox", "cat /proc/1/comm; systemctl is-system-running; id -un")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["systemd", "running", "root"]


def test_box_runs_transient_units_in_their_own_cgroup(sdbox: SystemdBox) -> None:
    unit = f"rigcheck-{uuid.uuid4().hex[:8]}"
    sdbox.run(["systemd-run", f"--unit={unit}", "-p", "Restart=always", "sleep", "600"])
    try:
        show = sdbox.run(["systemctl", "show", f"{unit}.service", "-p", "MainPID", "-p", "ControlGroup"])
        props = dict(line.split("=", 1) for line in show.stdout.splitlines())
        procs = sdbox.run(["cat", f"/sys/fs/cgroup{props['ControlGroup']}/cgroup.procs"]).stdout.split()
        assert procs == [props["MainPID"]]
    finally:
        sdbox.run(["systemctl", "stop", f"{unit}.service"], check=False)


def test_box_users_root_plain_and_sudoer(sdbox: SystemdBox) -> None:
    plain = sdbox.ssh("sdbox-user", "sudo -n true")
    assert plain.returncode != 0
    if sdbox.has_sudo:
        admin = sdbox.ssh("sdbox-admin", "sudo -n id -un")
        assert admin.returncode == 0, admin.stderr
        assert admin.stdout.strip() == "root"
    user_manager = sdbox.ssh(
        "sdbox-user", "XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user is-system-running"
    )
    assert user_manager.stdout.strip() in ("running", "degraded"), user_manager.stderr


def test_box_boot_cleans_only_its_own_tmp(private_sdbox: SystemdBox, tmp_path: Path) -> None:
    """The box's tmpfiles clean-up ran on the overlay: the real /tmp keeps its files, and a file
    written in the box's /tmp never appears on the machine."""
    marker = Path("/tmp") / f"ops-sdbox-sentinel-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    marker.write_text("keep me")
    try:
        private_sdbox.reboot()  # a boot runs systemd-tmpfiles --remove on the box's /tmp
        assert marker.read_text() == "keep me"
        inside = f"/tmp/written-in-box-{uuid.uuid4().hex[:6]}"
        private_sdbox.run(["sh", "-c", f"echo x > {inside}"])
        assert not Path(inside).exists()
    finally:
        marker.unlink()


def test_box_reboots_on_the_same_disk_and_tears_down(tmp_path: Path) -> None:
    from tests.systemd.conftest import require_box

    require_box()
    box = SystemdBox(tmp_path / "box")
    box.boot()
    try:
        box.run(["sh", "-c", "echo persisted > /var/lib/ops-rig-disk"])
        first = box.pid1
        box.reboot(clean=False)  # a power cut: PID 1 killed
        assert box.pid1 != first and not pid_alive(first)
        assert box.run(["cat", "/var/lib/ops-rig-disk"]).stdout.strip() == "persisted"
        assert box.ssh("sdbox", "true").returncode == 0
        pid1, addr, cgroup, veth = box.pid1, box.addr, box.cgroup_base, box.veth
    finally:
        box.close()
    assert not pid_alive(pid1)
    route = subprocess.run(["ip", "-o", "route", "get", addr], capture_output=True, text=True).stdout
    assert veth not in route  # (this machine's default route accepts any TCP connection)
    assert not cgroup.exists()
    assert not Path(f"/sys/class/net/{veth}").exists()


def test_a_box_whose_test_run_was_killed_is_reaped_by_the_next_boot(tmp_path: Path) -> None:
    """A test run killed before its teardown leaves its box behind; the next boot reaps it (and
    leaves a box whose owner still runs alone)."""
    import json
    import sys

    from tests.harness import wait_until
    from tests.systemd.conftest import require_box
    from tests.systemd_rig import reap_stale_boxes

    require_box()
    info = tmp_path / "info.json"
    script = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from tests.systemd_rig import SystemdBox\n"
        "b = SystemdBox(Path(sys.argv[1])).boot()\n"
        "Path(sys.argv[2]).write_text(json.dumps({'pid1': b.pid1, 'keeper': b.keeper.pid, 'veth': b.veth,"
        " 'cgroup': str(b.cgroup_base)}))\n"
        "os._exit(0)  # no teardown: as if the run was killed\n"
    )
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "orphan"), str(info)],
        cwd=repo,
        check=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    left = json.loads(info.read_text())
    assert pid_alive(left["pid1"]) and pid_alive(left["keeper"])
    assert left["keeper"] in reap_stale_boxes()
    wait_until(
        lambda: not pid_alive(left["pid1"]) and not pid_alive(left["keeper"]),
        20,
        message="the stale box to die",
    )
    assert not Path(left["cgroup"]).exists()
    assert not Path(f"/sys/class/net/{left['veth']}").exists()
