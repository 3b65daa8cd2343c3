"""The on-host supervisor (ops/agent/supervisor.py) run for real from the shipped zipapp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ops import agentpkg
from tests.harness import pid_alive, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "services"
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"

# crashes on its first run (no flag file yet), then stays up
CRASH_ONCE = (
    "import os, sys, time\n"
    "flag = sys.argv[1]\n"
    "if not os.path.exists(flag):\n"
    "    open(flag, 'w').close(); print('first run: crashing', flush=True); sys.exit(4)\n"
    "print('second run: up', flush=True)\n"
    "while True: time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    b = agentpkg.bundle()
    path = tmp_path_factory.mktemp("agent") / b.filename
    path.write_bytes(b.data)
    return path


class Running:
    def __init__(self, pyz: Path, tmp: Path, name: str, argv: list[str], **spec) -> None:
        self.state_path = tmp / f"{name}.supervisor.json"
        self.log = tmp / f"{name}.log"
        full = {"name": name, "argv": argv, "cwd": str(tmp), "state_path": str(self.state_path),
                "stop_timeout": 1.0, **spec}
        spec_path = tmp / f"{name}.supervise.json"
        spec_path.write_text(json.dumps(full))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(pyz), "supervise", str(spec_path)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def cleanup(self) -> None:
        child = self.state().get("child_pid")
        for pid in (self.proc.pid, child):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.wait(5)


@pytest.fixture
def supervise(pyz, tmp_path):
    started: list[Running] = []

    def start(name, argv, **spec) -> Running:
        r = Running(pyz, tmp_path, name, argv, **spec)
        started.append(r)
        return r

    yield start
    for r in started:
        r.cleanup()


def test_a_crash_loop_trips_the_breaker_and_stays_down(supervise):
    r = supervise("looper", [sys.executable, str(FIXTURES / "crash_on_start.py"), "--code", "3"],
                  restart={"policy": "on-failure", "backoff": 0.05, "breaker": 3, "min_uptime": 5})
    assert r.proc.wait(20) == 0
    st = r.state()
    assert st["state"] == "fatal"
    assert st["short_runs"] == [3, 3, 3]
    text = r.text()
    assert text.count("fatal: cannot start") == 3
    assert "CRITICAL looper: 3 consecutive runs shorter than 5s (exit codes 3, 3, 3); not restarting" in text
    assert "inv start looper" in text


def test_a_single_crash_comes_back_after_the_backoff_and_the_backoff_resets_when_stable(
        supervise, tmp_path):
    r = supervise("once", [sys.executable, "-c", CRASH_ONCE, str(tmp_path / "flag")],
                  restart={"policy": "always", "backoff": 0.3, "stable_after": 0.5, "min_uptime": 0.2})
    wait_until(lambda: "second run: up" in r.text(), timeout=10)
    text = r.text()
    assert "exited with code 4" in text and "restarting in 0.3s" in text
    wait_until(lambda: "backoff reset to 0.3s" in r.text(), timeout=10)
    st = r.state()
    assert st["state"] == "running" and st["restarts"] == 1 and st["backoff"] == 0.3
    assert pid_alive(st["child_pid"])


def test_backoff_doubles_between_consecutive_crashes(supervise):
    r = supervise("dbl", [sys.executable, str(FIXTURES / "crash_on_start.py")],
                  restart={"policy": "on-failure", "backoff": 0.1, "backoff_max": 0.3, "breaker": 4,
                           "min_uptime": 5})
    assert r.proc.wait(20) == 0
    delays = [line.split("restarting in ")[1] for line in r.text().splitlines() if "restarting in" in line]
    assert delays == ["0.1s", "0.2s", "0.3s"]


def test_a_frozen_child_is_stopped_and_restarted(supervise, tmp_path):
    hb = tmp_path / "hb.json"
    r = supervise("frozen", [sys.executable, str(DEMO / "worker.py"), "--heartbeat", str(hb),
                             "--interval", "0.1", "--freeze-after", "0.3"],
                  restart={"policy": "always", "backoff": 0.1, "min_uptime": 0.1},
                  heartbeat={"file": str(hb), "field": "unix_ts", "max_age": 0.8})
    wait_until(lambda: r.state().get("restarts", 0) >= 1, timeout=15)
    assert "frozen: heartbeat" in r.text()
    assert r.state()["last_reason"].startswith("frozen")
    wait_until(lambda: r.state().get("state") == "running", timeout=10)


def test_sigterm_to_the_supervisor_stops_the_child_and_never_restarts_it(supervise):
    r = supervise("term", [sys.executable, str(FIXTURES / "ignore_term.py")],
                  restart={"policy": "always", "backoff": 0.05})
    wait_until(lambda: "ready (ignoring TERM)" in r.text(), timeout=10)  # its handler is installed
    child = r.state()["child_pid"]
    os.kill(r.proc.pid, signal.SIGTERM)
    assert r.proc.wait(15) == 0
    assert not pid_alive(child)  # it ignored TERM: the supervisor escalated to KILL
    st = r.state()
    assert st["state"] == "stopped" and st["restarts"] == 0
    assert "escalating" in r.text() and "not restarting" in r.text()


def test_exit_zero_with_on_failure_means_done(supervise):
    r = supervise("oneshot", [sys.executable, "-c", "print('did the job', flush=True)"],
                  restart={"policy": "on-failure", "backoff": 0.05})
    assert r.proc.wait(10) == 0
    assert r.state()["state"] == "done"
    assert r.text().count("did the job") == 1


def test_max_instances_blocks_spawning_while_copies_of_its_own_run(supervise, tmp_path):
    # a copy running from the service's checkout (its cwd) is provably its own: it is counted
    other = subprocess.Popen([sys.executable, str(FIXTURES / "ignore_term.py"), "--copy"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        r = supervise("capped", [sys.executable, str(FIXTURES / "ignore_term.py")],
                      match=r"ignore_term\.py", max_instances=1, checkout=str(tmp_path),
                      restart={"policy": "always", "backoff": 0.1})
        wait_until(lambda: "max_instances 1 reached" in r.text(), timeout=10)
        assert r.state()["child_pid"] is None
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait(5)


def test_max_instances_does_not_count_a_copy_from_another_checkout(supervise, tmp_path):
    elsewhere = tmp_path / "prod"
    elsewhere.mkdir()
    other = subprocess.Popen([sys.executable, str(FIXTURES / "ignore_term.py"), "--copy"], cwd=elsewhere,
                             stdout=subprocess.DEVNULL, start_new_session=True)
    checkout = tmp_path / "staging"
    checkout.mkdir()
    try:
        r = supervise("capped", [sys.executable, str(FIXTURES / "ignore_term.py")],
                      match=r"ignore_term\.py", max_instances=1, checkout=str(checkout),
                      restart={"policy": "always", "backoff": 0.1})
        wait_until(lambda: r.state().get("child_pid"), timeout=10)
        assert "max_instances" not in r.text()
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait(5)
