"""A service without `match` is found by the command line its process really shows: a program
named without a path may show as the full path a shim (pyenv, asdf) exec'd, and a script run by
its path shows its `#!` interpreter first. Hand-started copies are found either way (the start
refuses to run a second one; the stop sweeps one from this checkout). Local and over sshd."""

from __future__ import annotations

import os
import shutil
import stat

from tests.harness import pid_alive, wait_until
from tests.integration.rig import (  # noqa: F401
    Rig,
    by_name,
    local_rig_fixture,
    rig_fixture,
)


def _python_by_path() -> str:
    """python3 as a shim would exec it: by its full path."""
    found = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    assert found, "no python3 on this machine"
    return found


def test_a_copy_started_by_the_interpreters_full_path_is_found(rig: Rig) -> None:
    cmd = rig.script("idle.py", "dp-full")  # "python3 <checkout>/services/idle.py dp-full"
    rig.write({"svc": {"cmd": cmd}})
    copy, copy_log = rig.tracker.start([_python_by_path(), *cmd.split()[1:]], cwd=rig.checkout)
    wait_until(lambda: "idle ready" in copy_log.read_text(), 10)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "failed"
    assert f"already running outside this tool's control: pid {copy.pid} (" in r["detail"]
    assert copy.poll() is None, "start never kills what it did not start"


def test_a_script_run_by_its_path_is_found_by_what_its_process_shows(rig: Rig) -> None:
    script = rig.checkout / "services" / "idle.py"  # #!/usr/bin/env python3
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    rig.write({"svc": {"cmd": "services/idle.py dp-script", "ready": {"log": "idle ready"}}})
    started = by_name(rig.start())["svc"]
    assert started["outcome"] == "started", started
    # a second copy started by hand the same way, from this checkout: the tool's own by its
    # pattern + user + checkout (the process shows "python3 <checkout>/services/idle.py ...")
    copy, copy_log = rig.tracker.start([str(script), "dp-script"], cwd=rig.checkout)
    wait_until(lambda: "idle ready" in copy_log.read_text(), 10)  # the interpreter runs it now

    r = by_name(rig.stop())["svc"]

    assert r["outcome"] == "stopped", r
    assert copy.pid in [o["pid"] for o in r["orphans"]]
    wait_until(lambda: copy.poll() is not None, 10)
    assert not pid_alive(started["pid"])
    assert os.path.exists(script)


def test_a_script_found_by_path_is_found_by_what_its_process_shows(rig: Rig) -> None:
    bindir = rig.checkout / "bin"
    bindir.mkdir()
    tool = bindir / "idle-tool"  # like a venv's console script: a #! script that PATH finds
    shutil.copy(rig.checkout / "services" / "idle.py", tool)
    tool.chmod(0o755)
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    rig.write({"svc": {"cmd": "idle-tool dp-path", "env": {"PATH": path}, "ready": {"log": "idle ready"}}})
    started = by_name(rig.start())["svc"]
    assert started["outcome"] == "started", started
    copy, copy_log = rig.tracker.start([str(tool), "dp-path"], cwd=rig.checkout)
    wait_until(lambda: "idle ready" in copy_log.read_text(), 10)

    r = by_name(rig.stop())["svc"]

    assert r["outcome"] == "stopped", r
    assert copy.pid in [o["pid"] for o in r["orphans"]]
    wait_until(lambda: copy.poll() is not None, 10)
