"""The warm path against the real sshd: with [ssh] persist, a host's connection and agent are held by
a per-user background process between tasks and reused; a dead one is detected before use and the
task runs on a fresh connection; nothing is held that holds a lock, errored, or was left mid-request;
another version never attaches; --no-persist and `inv disconnect` leave nothing held."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import agentpkg, inventory, persist
from ops.errors import AgentError
from ops.session import HostSession
from tests.harness import SshServer, pid_alive, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime dir for this test's holder, and every holder closed at the end."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    monkeypatch.delenv("OPS_NO_PERSIST", raising=False)
    yield d / "ops"
    persist.disconnect_all()


def _inventory(tmp_path: Path, server: SshServer, seconds: float = 30,
               transport: str = "paramiko") -> inventory.Inventory:
    path = tmp_path / "hosts.toml"
    path.write_text(
        f'[ssh]\nconfig = "{server.ssh_config_path}"\npersist = {seconds}\ntransport = "{transport}"\n'
        f'[hosts.box]\nssh = "opstest"\npath = "{tmp_path / "checkout"}"\n'
        f'state_dir = "{tmp_path / "state"}"\nservices = ["idle"]\n'
        '[services.idle]\ncmd = "sleep 1000"\n'
    )
    return inventory.load(str(path))


def _open(inv: inventory.Inventory) -> HostSession:
    return HostSession(inv, inv.host("box")).open()


def _held(inv: inventory.Inventory) -> HostSession:
    """A session on the held agent, once the holder holds it (it connects in the background)."""

    def attached() -> HostSession | None:
        s = _open(inv)
        if getattr(s.transport, "held", False):
            return s
        s.close()
        return None

    return wait_until(attached, 60, interval=0.1, message="the holder holds the host")


TRANSPORTS = ("paramiko", "openssh")  # the holder keeps either (over openssh: the ssh process)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_second_task_reuses_the_held_connection_and_agent(tmp_path, sshd, runtime, transport):
    inv = _inventory(tmp_path, sshd, transport=transport)
    cold = _open(inv)
    assert not getattr(cold.transport, "held", False)
    assert cold.call("ping")["pong"]
    cold_agent = cold.agent.hello["pid"]
    cold.close()  # hands the host over to a (new) holder
    warm = _held(inv)
    held_agent = warm.agent.hello["pid"]
    assert held_agent != cold_agent and pid_alive(held_agent)
    assert warm.call("ping")["pong"]
    warm.close()
    again = _held(inv)
    assert again.agent.hello["pid"] == held_agent  # the same agent, no new start
    assert again.agent.hello["version"] == agentpkg.bundle().version
    again.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_held_agent_that_died_is_detected_before_use_and_the_task_connects_afresh(
        tmp_path, sshd, runtime, transport):
    inv = _inventory(tmp_path, sshd, transport=transport)
    _open(inv).close()
    warm = _held(inv)
    agent_pid = warm.agent.hello["pid"]
    warm.close()
    os.kill(agent_pid, signal.SIGKILL)  # the agent this test was handed (its hello's pid)
    wait_until(lambda: not pid_alive(agent_pid), 10)
    s = _open(inv)  # the holder pings it first, finds it dead, says no: a direct connection
    try:
        assert not getattr(s.transport, "held", False)
        assert s.agent.hello["pid"] != agent_pid
        assert s.call("ping")["pong"]
    finally:
        s.close()
    again = _held(inv)  # and the host is held again, by a new agent
    assert again.agent.hello["pid"] != agent_pid
    again.close()


def test_a_held_agent_whose_client_left_holding_a_deploy_lock_is_closed(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    s = _held(inv)
    agent_pid = s.agent.hello["pid"]
    got = s.call("deploy_lock", {"host": s.host_args(), "owner": {"run_id": "r1"}})
    assert got["acquired"] is True
    assert s.call("held_locks")["deploy"]  # healthy twin of the check below: it does hold it
    s.close()  # no unlock: the holder must not keep an agent that holds the lock
    wait_until(lambda: not pid_alive(agent_pid), 30, message="the agent holding the lock ended")
    lock = Path(tmp_path / "state" / "deploy.lock")
    assert not lock.exists()  # the agent released it as it exited
    fresh = _open(inv)
    try:
        assert fresh.agent.hello["pid"] != agent_pid
    finally:
        fresh.close()


def test_a_held_agent_is_closed_after_an_error_event(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    s = _held(inv)
    agent_pid = s.agent.hello["pid"]
    with pytest.raises(AgentError):
        s.call("exec", {"cmd": None})  # the agent answers with an error event
    s.close()
    wait_until(lambda: not pid_alive(agent_pid), 30, message="the agent that errored ended")


def test_a_client_that_leaves_mid_request_gets_its_agent_closed_like_a_fresh_one(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    s = _held(inv)
    agent_pid = s.agent.hello["pid"]
    assert s.agent.channel is not None
    s.agent.channel.send(b'{"id": 99, "op": "exec", "args": {"cmd": "sleep 1", "timeout": 30}}\n')
    s.close()  # its stdin closes: it finishes the command, then exits
    wait_until(lambda: not pid_alive(agent_pid), 30, message="the agent left mid-request ended")


def test_another_agent_version_never_attaches(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    _held(inv).close()
    key = persist.host_key(inv, inv.host("box"))
    got = persist.request(persist.socket_path(), {"op": "attach", "key": key, "version": "0" * 16})
    assert got is not None
    got[0].close()
    assert got[1] == {"ok": False, "why": "another agent version"}


def test_no_persist_neither_uses_nor_starts_a_holder(tmp_path, sshd, runtime, monkeypatch):
    inv = _inventory(tmp_path, sshd)
    monkeypatch.setenv("OPS_NO_PERSIST", "1")
    s = _open(inv)
    assert not getattr(s.transport, "held", False)
    s.close()
    assert not list(runtime.glob("holder-*.sock")) if runtime.exists() else True


def test_persist_off_by_default_starts_no_holder(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd, seconds=0)
    _open(inv).close()
    assert not runtime.exists() or not list(runtime.glob("holder-*.sock"))


def test_inv_disconnect_closes_every_held_connection(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    s = _held(inv)
    agent_pid = s.agent.hello["pid"]
    s.close()
    env = dict(os.environ, OPS_INVENTORY=inv.path, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "invoke", "disconnect"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "closed 1 held connection"
    wait_until(lambda: not pid_alive(agent_pid), 30, message="the held agent ended")
    assert not list(runtime.glob("holder-*.sock"))


def test_inv_status_runs_warm_with_the_same_output(tmp_path, sshd, runtime):
    inv = _inventory(tmp_path, sshd)
    env = dict(os.environ, OPS_INVENTORY=inv.path, PYTHONPATH=str(REPO))

    def status() -> str:
        r = subprocess.run([sys.executable, "-m", "invoke", "status", "--host", "box"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 6, r.stdout + r.stderr  # 6: the service is stopped (status's codes)
        return r.stdout

    cold = status()
    held = _held(inv)
    agent_pid = held.agent.hello["pid"]
    held.close()
    warm = status()
    assert warm == cold and "idle" in warm and "stopped" in warm
    again = _held(inv)  # the task ran on the held agent, which is still held
    assert again.agent.hello["pid"] == agent_pid
    again.close()


def test_the_runtime_dir_must_be_private(tmp_path, monkeypatch):
    base = tmp_path / "rt"
    (base / "ops").mkdir(parents=True)
    (base / "ops").chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    from ops.errors import TransportError

    with pytest.raises(TransportError, match="not a private directory"):
        persist.runtime_dir()
    (base / "ops").chmod(0o700)
    assert persist.runtime_dir() == base / "ops"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to connect as another user) and /usr/bin/python3")
def test_the_holder_answers_only_peers_of_its_own_uid(tmp_path):
    """Even on a socket another user can reach, the holder says nothing to a peer of another uid
    (SO_PEERCRED); the same request from this uid is answered (the twin)."""
    import shutil
    import tempfile
    import threading

    from ops import holder

    d = Path(tempfile.mkdtemp(prefix="ops-peercred-", dir="/tmp"))  # reachable by another user
    d.chmod(0o777)
    path = d / "holder.sock"
    h = holder.Holder(str(path))
    t = threading.Thread(target=h.run, args=(None,), daemon=True)
    t.start()
    try:
        wait_until(path.exists, 10, message="the holder listens")
        path.chmod(0o777)  # as if the directory did not protect it
        request = '{"op": "attach", "key": "k", "version": "v"}\n'
        # the holder may close before the request is even sent (EPIPE) or read (ECONNRESET):
        # either way the peer got nothing
        ask = ("import socket, sys\ns = socket.socket(socket.AF_UNIX); s.settimeout(10)\n"
               "s.connect(sys.argv[1])\n"
               "try:\n    s.sendall(sys.argv[2].encode())\n    print(repr(s.recv(1000)))\n"
               "except (BrokenPipeError, ConnectionResetError):\n    print(repr(b''))\n")
        other = subprocess.run(["/usr/bin/python3", "-c", ask, str(path), request], user=65534,
                               capture_output=True, text=True, timeout=30, cwd="/")
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "b''"  # closed without a word
        mine = subprocess.run([sys.executable, "-c", ask, str(path), request], capture_output=True, text=True,
                              timeout=30)
        assert mine.returncode == 0, mine.stderr
        answer = json.loads(ast.literal_eval(mine.stdout.strip()))
        assert answer == {"ok": False, "why": "another agent version"}
    finally:
        h.quit.set()
        t.join(15)
        shutil.rmtree(d, ignore_errors=True)


def test_a_request_stream_passes_through_the_holder_whole(tmp_path, sshd, runtime):
    # a git bundle is raw bytes after the request line: the holder passes on exactly as many as
    # the request announces, whatever newlines they hold, and ends the last line of none (it
    # forwarded whole lines only, and a bundle not ending in a newline hung the warm deploy)
    inv = _inventory(tmp_path, sshd)
    _open(inv).close()
    warm = _held(inv)
    try:
        for i, payload in enumerate([b"a\nb\n" + bytes(range(256)) * 1200 + b"no newline at the end",
                                     b'{"id": 99, "op": "ping"}\n' * 3 + b"tail",
                                     b"ends with a newline\n"]):
            f = tmp_path / f"stream-{i}"
            f.write_bytes(payload)
            assert warm.call("ping", stream=str(f), timeout=20)["pong"]
        assert warm.call("ping", timeout=20)["pong"]  # the lines after the streams still frame
    finally:
        warm.close()
    again = _held(inv)  # and the agent was kept: every request was answered
    again.close()


def test_a_task_that_fails_on_its_own_after_attaching_early_hands_the_agent_back(tmp_path, sshd, runtime):
    # the task attaches to the held agent as soon as it knows its host (open_early), then refuses
    # an unknown service (exit 2): the held agent it did not use goes back to the holder, idle
    inv = _inventory(tmp_path, sshd)
    env = dict(os.environ, OPS_INVENTORY=inv.path, PYTHONPATH=str(REPO))
    _open(inv).close()
    held = _held(inv)
    agent_pid = held.agent.hello["pid"]
    held.close()
    for task in ("stop", "status"):
        r = subprocess.run([sys.executable, "-m", "invoke", task, "--host", "box", "--service", "nosuch"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
    again = _held(inv)
    assert again.agent.hello["pid"] == agent_pid  # still held, not busy, the same agent
    assert again.call("ping")["pong"]
    again.close()


def test_a_paramiko_held_agent_is_not_used_by_the_openssh_transport(tmp_path, sshd, runtime):
    para = _inventory(tmp_path, sshd)
    _open(para).close()
    held = _held(para)
    para_agent = held.agent.hello["pid"]
    held.close()
    ossh = _inventory(tmp_path, sshd, transport="openssh")  # the same file, now over openssh
    s = _open(ossh)
    try:
        assert s.agent.hello["pid"] != para_agent  # another key: not the paramiko one
    finally:
        s.close()
