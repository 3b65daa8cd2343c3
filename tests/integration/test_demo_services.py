"""The demo services (examples/demo) and the misbehaving fixture services behave as documented.

Real processes, no ssh. Every process is started in its own session by a ProcessTracker and the
whole group is SIGKILLed at teardown, whatever happened. Set SERVICE_PYTHON=/path/to/python3.8
to run the services under another interpreter (they must stay python3.8+ and stdlib-only).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import (
    ProcessTracker,
    child_pids,
    cmdline,
    free_port,
    holds_for,
    kill_quietly,
    pid_alive,
    port_open,
    process_ids,
    read_text,
    wait_for_port,
    wait_for_port_closed,
    wait_for_text,
    wait_until,
)

PY = os.environ.get("SERVICE_PYTHON", sys.executable)
ALLOWED_ENV = {
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "USER",
    "LOGNAME",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "DEMO_TOKEN",
    "DEMO_COMMIT",
    "DEMO_API_FAIL",
}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessTracker]:
    tracker = ProcessTracker(tmp_path / "logs")
    try:
        yield tracker
    finally:
        tracker.cleanup()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env.update(extra)
    return env


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def health_pid(port: int) -> int | None:
    """The pid reported by a healthy /health, or None if it does not answer 200."""
    try:
        status, body = http_get(port, "/health")
    except OSError:
        return None
    return body["pid"] if status == 200 else None


# --------------------------------------------------------------------------- demo daemon + api


@dataclass
class Daemon:
    proc: subprocess.Popen
    port: int
    log: Path
    api_log: Path
    token: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api_pid(self, timeout: float = 10.0) -> int:
        """The single live child of the daemon (the API)."""
        children = wait_until(lambda: child_pids(self.pid), timeout, message="the daemon's child")
        assert len(children) == 1, children
        return children[0]

    def text(self) -> str:
        return read_text(self.log)


def start_daemon(
    procs: ProcessTracker,
    demo_dir: Path,
    tmp_path: Path,
    *options: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_ready: bool = True,
) -> Daemon:
    port = port or free_port()
    token = "tok-" + secrets.token_hex(12)
    workdir = tmp_path / "svc"
    workdir.mkdir(exist_ok=True)
    (workdir / "REVISION").write_text("rev-from-file\nsecond line\n")
    log, api_log = tmp_path / "daemon.log", tmp_path / "api.log"
    argv = [PY, str(demo_dir / "daemon.py"), "auto", "--api-port", str(port)]
    argv += ["--api-log", str(api_log), "--restart-delay", "0.1", *options]
    proc, _ = procs.start(
        argv, log=log, env=clean_env(DEMO_TOKEN=token, **(env or {})), cwd=workdir
    )
    daemon = Daemon(proc, port, log, api_log, token)
    if wait_ready:
        wait_for_text(log, "auto-answering", timeout=10)
    return daemon


def test_daemon_serves_health_and_lookup_from_its_child(procs, demo_dir, tmp_path):
    daemon = start_daemon(procs, demo_dir, tmp_path)
    api = daemon.api_pid()
    assert f"api ready pid {api}" in daemon.text()
    ids = process_ids(api)
    assert ids is not None
    assert ids["ppid"] == daemon.pid
    assert ids["pgid"] == daemon.pid  # same process group: killpg of the daemon reaches it
    assert cmdline(api)[1:] == [str(demo_dir / "api.py"), "--port", str(daemon.port)]

    status, body = http_get(daemon.port, "/health")
    assert status == 200
    assert body == {"status": "ok", "commit": "rev-from-file", "pid": api}

    good = {"X-Demo-Token": daemon.token}
    assert http_get(daemon.port, "/v1/lookup?name=alice", good) == (
        200,
        {"name": "alice", "number": "+1-555-0100"},
    )
    assert http_get(daemon.port, "/v1/lookup?name=nobody", good)[0] == 404
    assert http_get(daemon.port, "/v1/lookup?name=alice", {"X-Demo-Token": "wrong"}) == (
        401,
        {"error": "bad token"},
    )
    assert http_get(daemon.port, "/v1/lookup?name=alice")[0] == 401


def test_daemon_restarts_a_killed_api(procs, demo_dir, tmp_path):
    daemon = start_daemon(procs, demo_dir, tmp_path)
    old = daemon.api_pid()
    os.kill(old, signal.SIGKILL)
    new = wait_until(
        lambda: (pid := health_pid(daemon.port)) not in (None, old) and pid,
        10,
        message="a new api pid answering /health",
    )
    assert child_pids(daemon.pid) == [new]
    text = wait_for_text(daemon.log, f"api ready pid {new}")
    assert re.search(r"api exited with code -9 after [\d.]+s; restarting in 0.1s", text)
    assert text.count("auto-answering") == 1  # only after the first start
    # The API log was opened once and appended to by both runs.
    api_text = read_text(daemon.api_log)
    assert f"pid {old}" in api_text and f"pid {new}" in api_text


def test_no_restart_variant_leaves_the_api_down(procs, demo_dir, tmp_path):
    daemon = start_daemon(procs, demo_dir, tmp_path, "--no-restart")
    os.kill(daemon.api_pid(), signal.SIGKILL)
    text = wait_for_text(daemon.log, "not restarting", timeout=10)
    assert "not restarting (--no-restart)" in text
    assert not port_open(daemon.port)
    assert child_pids(daemon.pid) == []
    assert daemon.proc.poll() is None  # the daemon itself keeps running


def test_sigterm_stops_daemon_and_api_and_never_logs_the_token(procs, demo_dir, tmp_path):
    daemon = start_daemon(procs, demo_dir, tmp_path)
    api = daemon.api_pid()
    assert http_get(daemon.port, "/v1/lookup?name=bob", {"X-Demo-Token": daemon.token})[0] == 200
    assert http_get(daemon.port, "/v1/lookup?name=bob", {"X-Demo-Token": "nope"})[0] == 401

    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    wait_until(lambda: not pid_alive(api), 5, message=f"api pid {api} gone")
    wait_for_port_closed(daemon.port, timeout=5)
    text = daemon.text()
    assert "daemon stopped" in text
    assert f"stopping api pid {api}" in text
    for log in (daemon.log, daemon.api_log):
        assert daemon.token not in read_text(log), f"token leaked into {log.name}"


def test_api_gets_only_allow_listed_environment(procs, demo_dir, tmp_path):
    extra = {
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/0/bus",
        "XDG_RUNTIME_DIR": "/run/user/0",
        "DEMO_COMMIT": "c0ffee",
        "UNRELATED_SECRET": "do-not-pass",
    }
    daemon = start_daemon(procs, demo_dir, tmp_path, env=extra)
    api = daemon.api_pid()
    raw = Path(f"/proc/{api}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if item)
    assert set(env) <= ALLOWED_ENV
    assert env["DEMO_TOKEN"] == daemon.token
    assert env["DBUS_SESSION_BUS_ADDRESS"] == extra["DBUS_SESSION_BUS_ADDRESS"]
    assert env["XDG_RUNTIME_DIR"] == extra["XDG_RUNTIME_DIR"]
    assert "UNRELATED_SECRET" not in env
    assert http_get(daemon.port, "/health")[1]["commit"] == "c0ffee"


def test_failing_api_variant_is_up_but_unhealthy(procs, demo_dir, tmp_path):
    daemon = start_daemon(procs, demo_dir, tmp_path, env={"DEMO_API_FAIL": "1"})
    assert http_get(daemon.port, "/health") == (500, {"status": "failing"})


def test_circuit_breaker_gives_up_on_a_crash_loop(procs, demo_dir, services_dir, tmp_path):
    port = free_port()
    holder, holder_log = procs.start(
        [PY, str(services_dir / "port_holder.py"), "--port", str(port)]
    )
    wait_for_text(holder_log, f"holding {port}")
    options = ("--breaker", "3", "--restart-delay", "0.05")
    daemon = start_daemon(procs, demo_dir, tmp_path, *options, port=port, wait_ready=False)
    text = wait_for_text(daemon.log, "CRITICAL api crash loop", timeout=15)
    assert "CRITICAL api crash loop: 3 restarts" in text
    assert text.count("api started pid") == 3
    assert "auto-answering" not in text  # the holder does not speak HTTP: never "ready"
    assert read_text(daemon.api_log).count("cannot listen on") == 3
    assert holds_for(lambda: daemon.text().count("api started pid") == 3, 0.3)
    assert daemon.proc.poll() is None
    assert holder.poll() is None


def test_stale_api_on_the_port_is_not_taken_for_the_daemons_child(procs, demo_dir, tmp_path):
    """Runbook 1, step 2: an orphaned API from an earlier run still holds the port. It answers
    /health, but the daemon must not call that "ready"; once the orphan is killed, it recovers."""
    port = free_port()
    stale, stale_log = procs.start([PY, str(demo_dir / "api.py"), "--port", str(port)])
    wait_for_text(stale_log, f"api listening on 127.0.0.1:{port}")
    daemon = start_daemon(
        procs, demo_dir, tmp_path, "--breaker", "1000", port=port, wait_ready=False
    )
    wait_for_text(daemon.log, "api exited with code 1", timeout=10)
    assert "api ready" not in daemon.text()
    stale.kill()
    stale.wait(timeout=5)
    wait_for_text(daemon.log, "auto-answering", timeout=10)
    assert health_pid(port) == daemon.api_pid()


def test_api_commit_sources(procs, demo_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    empty = tmp_path / "empty"
    empty.mkdir()
    ceiling = {"GIT_CEILING_DIRECTORIES": str(tmp_path)}
    cases = [
        (repo, {}, head),
        (repo, {"DEMO_COMMIT": "from-env"}, "from-env"),
        (empty, {}, "unknown"),
    ]
    for cwd, env, expected in cases:
        port = free_port()
        proc, log = procs.start(
            [PY, str(demo_dir / "api.py"), "--port", str(port)],
            env=clean_env(**ceiling, **env),
            cwd=cwd,
        )
        wait_for_text(log, f"api listening on 127.0.0.1:{port} pid {proc.pid}")
        assert http_get(port, "/health") == (
            200,
            {"status": "ok", "commit": expected, "pid": proc.pid},
        )
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert "api stopped" in read_text(log)


def test_api_without_token_refuses_every_lookup(procs, demo_dir):
    port = free_port()
    proc, log = procs.start([PY, str(demo_dir / "api.py"), "--port", str(port)], env=clean_env())
    wait_for_port(port, timeout=10)
    assert http_get(port, "/v1/lookup?name=alice", {"X-Demo-Token": ""}) == (
        401,
        {"error": "bad token"},
    )


def test_worker_heartbeat_and_freeze(procs, demo_dir, tmp_path):
    beat = tmp_path / "logs" / "heartbeat.json"
    argv = [PY, str(demo_dir / "worker.py"), "--heartbeat", str(beat), "--interval", "0.05"]
    proc, log = procs.start([*argv, "--freeze-after", "0.4"])
    wait_for_text(log, f"worker ready pid {proc.pid}")

    def beat_ts() -> float | None:
        try:
            data = json.loads(beat.read_text())
        except (FileNotFoundError, ValueError):
            return None
        assert data["pid"] == proc.pid
        return data["unix_ts"]

    first = wait_until(beat_ts, 5, message="first heartbeat")
    wait_until(lambda: (beat_ts() or 0) > first, 5, message="heartbeat advancing")
    wait_for_text(log, "worker frozen", timeout=5)
    frozen_at = beat_ts()
    assert frozen_at is not None and abs(time.time() - frozen_at) < 5
    assert holds_for(lambda: beat_ts() == frozen_at and proc.poll() is None, 0.3)
    assert not list(beat.parent.glob("*.tmp.*"))  # atomic writes leave no temporary files
    proc.terminate()
    assert proc.wait(timeout=5) == 0


# --------------------------------------------------------------------------- fixture services


def test_ignore_term_survives_sigterm(procs, services_dir):
    proc, log = procs.start([PY, str(services_dir / "ignore_term.py")])
    wait_for_text(log, f"ready (ignoring TERM) pid {proc.pid}")
    status = Path(f"/proc/{proc.pid}/status").read_text()
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    assert ignored & (1 << (signal.SIGTERM - 1))
    proc.terminate()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)
    proc.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.parametrize(("args", "code"), [((), 3), (("--code", "7"), 7)])
def test_crash_on_start_exits_with_its_code(procs, services_dir, args, code):
    proc, log = procs.start([PY, str(services_dir / "crash_on_start.py"), *args])
    assert proc.wait(timeout=10) == code
    assert read_text(log).splitlines() == ["starting", "fatal: cannot start"]


def test_late_ready_prints_its_line_late_then_listens(procs, services_dir):
    port = free_port()
    started = time.monotonic()
    argv = [PY, str(services_dir / "late_ready.py"), "--delay", "0.3", "--line", "READY now"]
    proc, log = procs.start([*argv, "--port", str(port)])
    wait_for_text(log, "READY now", timeout=10)
    assert time.monotonic() - started >= 0.3
    assert read_text(log).splitlines()[:2] == ["booting", "READY now"]
    wait_for_port(port, timeout=5)
    assert proc.poll() is None


def test_orphan_maker_leaves_a_grandchild_in_another_session(procs, services_dir):
    proc, log = procs.start([PY, str(services_dir / "orphan_maker.py")])
    text = wait_for_text(log, "grandchild ready pid", timeout=10)
    grandchild = int(re.search(r"grandchild ready pid (\d+)", text).group(1))
    procs.adopt(grandchild)
    assert f"parent ready pid {proc.pid}" in text
    assert cmdline(grandchild)[1:] == [str(services_dir / "orphan_maker.py"), "--grandchild"]
    parent_ids, child_ids = process_ids(proc.pid), process_ids(grandchild)
    assert parent_ids and child_ids
    assert child_ids["sid"] == grandchild != parent_ids["sid"]
    assert child_ids["pgid"] != parent_ids["pgid"]
    # Killing the parent's whole group does not reach the grandchild: it is an orphan now.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert pid_alive(grandchild)
    kill_quietly(grandchild)
    wait_until(lambda: not pid_alive(grandchild), 5, message="grandchild gone")


def test_port_holder_holds_the_port(procs, services_dir):
    port = free_port()
    proc, log = procs.start([PY, str(services_dir / "port_holder.py"), "--port", str(port)])
    wait_for_text(log, f"holding {port} pid {proc.pid}")
    assert port_open(port)
    with socket.socket() as sock, pytest.raises(OSError):
        sock.bind(("127.0.0.1", port))


def test_spawner_keeps_spawning_children(procs, services_dir):
    argv = [PY, str(services_dir / "spawner.py"), "--copies", "3", "--every", "0.05"]
    proc, log = procs.start([*argv, "--child-arg", "loop-task"])
    wait_for_text(log, "spawned child 3/3", timeout=10)
    children = wait_until(
        lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), 10, message="3 children"
    )
    for child in children:
        assert cmdline(child)[1:] == [str(services_dir / "spawner.py"), "--child", "loop-task"]
        assert process_ids(child)["pgid"] == proc.pid
    wait_for_text(log, "child loop-task pid", count=3)
    assert proc.poll() is None


def test_http_status_answers_with_the_given_status(procs, services_dir):
    port = free_port()
    argv = [PY, str(services_dir / "http_status.py"), "--port", str(port), "--status", "500"]
    proc, log = procs.start(argv)
    wait_for_text(log, f"http_status listening on 127.0.0.1:{port} status 500 pid {proc.pid}")
    assert http_get(port, "/health") == (500, {"status": 500})
    assert http_get(port, "/anything") == (500, {"status": 500})
