"""Issue 12 item 12, end to end: the tool's supervisor survives a full disk. Its state dir (its
state file and its own log) is a small tmpfs mounted for the test (needs root), filled up while
the service runs; a crash of the child must still be followed by a restart, the supervisor must
stay alive with its child, and once there is room again its state shows the failed writes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import pid_alive, wait_until
from tests.integration.rig import Rig, by_name, rig_fixture  # noqa: F401


def fill(path: Path) -> None:
    """Write to path (appending) until the file system says it is full."""
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"filler written by the test to fill the disk\n" * 64)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


@pytest.fixture
def tiny_state_dir(rig: Rig) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to mount a small tmpfs")
    rig.state_dir.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(rig.state_dir)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield rig.state_dir
    finally:
        rig.close()
        rig.kill_everything()
        subprocess.run(["umount", "-l", str(rig.state_dir)], capture_output=True, timeout=30)


def children_of(ppid: int, needle: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid and needle in cmd:
            out.append(int(entry))
    return out


def test_a_full_disk_never_kills_the_supervisor_nor_orphans_its_child(rig: Rig, tiny_state_dir: Path) -> None:
    rig.write({"svc": {"cmd": rig.script("late_ready.py", "--delay", 0, python=sys.executable),
                       "log": str(rig.root / "svc.log"),  # the service itself can still write
                       "restart": "always", "backoff": 0.2, "min_uptime": 0.1,
                       "ready": {"log": "^ready"}}})
    assert by_name(rig.start())["svc"]["outcome"] == "started"
    supervisor, child = rig.state("svc")["pid"], rig.status("svc")["svc"]["pid"]

    fill(tiny_state_dir / "filler")
    fill(rig.supervisor_log("svc"))  # its log's last page too: every write of it fails now
    os.kill(child, signal.SIGKILL)

    new = wait_until(lambda: [p for p in children_of(supervisor, "late_ready.py") if p != child], timeout=30)
    assert pid_alive(supervisor)
    assert pid_alive(new[0])

    (tiny_state_dir / "filler").unlink()  # room again: the state it could not write is written
    wait_until(lambda: rig.status("svc")["svc"]["pid"] == new[0], timeout=30)
    st = rig.status("svc")["svc"]
    assert st["state"] == "running" and st["restarts"] == 1, st
    assert "supervisor could not write" in st["detail"] and "No space left on device" in st["detail"]
    assert st["write_errors"]["state"]["count"] >= 1 and st["write_errors"]["log"]["count"] >= 1
    r = by_name(rig.stop())["svc"]
    assert r["outcome"] == "stopped", r
    rig.wait_none_running(timeout=5)
