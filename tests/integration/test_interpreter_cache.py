"""The host's resolved interpreter, remembered per host: used directly next time, and forgotten
when a start through it fails (the agent then starts with the configured `python`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ops import hostcache, inventory
from ops.session import HostSession

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> inventory.Inventory:
    monkeypatch.setenv("OPS_CACHE_DIR", str(tmp_path / "client-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host-cache"))
    path = tmp_path / "hosts.toml"
    path.write_text(f'[hosts.here]\nlocal = true\npath = "{REPO}"\nstate_dir = "{tmp_path / "state"}"\n'
                    'services = ["idle"]\n[services.idle]\ncmd = "sleep 1000"\n')
    return inventory.load(str(path))


def _key(inv: inventory.Inventory) -> str:
    h = inv.host("here")
    return hostcache.key(h.name, "local", h.python)


def test_the_resolved_interpreter_is_remembered_and_used(local_inv):
    s = HostSession(local_inv, local_inv.host("here")).open()
    try:
        exe = s.agent.hello["executable"]
        assert Path(exe).is_absolute()
    finally:
        s.close()
    assert hostcache.load(_key(local_inv))["python"] == exe
    s = HostSession(local_inv, local_inv.host("here")).open()
    try:
        assert s.call("ping")["pong"] is True
        assert s.agent.hello["executable"] == exe
    finally:
        s.close()


def test_a_remembered_interpreter_that_fails_is_forgotten_and_python_used(local_inv, tmp_path):
    bad = tmp_path / "broken-python"
    bad.write_text("#!/bin/sh\necho 'not python' >&2\nexit 1\n")
    bad.chmod(0o755)
    hostcache.remember(_key(local_inv), python=str(bad))
    s = HostSession(local_inv, local_inv.host("here")).open()
    try:
        assert s.call("ping")["pong"] is True
        assert s.agent.hello["executable"] != str(bad)
    finally:
        s.close()
    assert hostcache.load(_key(local_inv))["python"] == s.agent.hello["executable"]


def test_a_damaged_cache_entry_reads_as_empty(local_inv):
    hostcache.remember(_key(local_inv), python=sys.executable)
    path = hostcache._path(_key(local_inv))
    path.write_text("{not json")
    assert hostcache.load(_key(local_inv)) == {}


SHIM = """#!/bin/sh
# a wrapper like pyenv's shim: it changes the environment, then execs the real interpreter
export SHIMMED_BY=fake-pyenv
export PATH="{bindir}:$PATH"
unset DROPPED_BY_SHIM
exec {python} "$@"
"""


def test_the_environment_a_shim_gives_is_the_same_when_the_interpreter_is_execd_directly(
        tmp_path, monkeypatch):
    """Through the shim, then directly: the agent (and what it runs) sees the same environment."""
    monkeypatch.setenv("OPS_CACHE_DIR", str(tmp_path / "client-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host-cache"))
    monkeypatch.setenv("DROPPED_BY_SHIM", "yes")
    bindir = tmp_path / "versions" / "bin"
    bindir.mkdir(parents=True)
    shim = tmp_path / "shim-python3"
    shim.write_text(SHIM.format(bindir=bindir, python=sys.executable))
    shim.chmod(0o755)
    path = tmp_path / "hosts.toml"
    path.write_text(f'[hosts.here]\nlocal = true\npython = "{shim}"\npath = "{REPO}"\n'
                    f'state_dir = "{tmp_path / "state"}"\nservices = ["idle"]\n'
                    '[services.idle]\ncmd = "sleep 1000"\n')
    inv = inventory.load(str(path))
    key = hostcache.key("here", "local", str(shim))
    probe = {"cmd": "echo \"$SHIMMED_BY|$PATH|${DROPPED_BY_SHIM-unset}\""}

    s = HostSession(inv, inv.host("here")).open()  # through the shim
    try:
        through_shim = s.call("exec", probe)["stdout"]
        delta = s.agent.hello["env_delta"]
    finally:
        s.close()
    assert through_shim == f"fake-pyenv|{bindir}:{os.environ['PATH']}|unset\n"
    assert delta["SHIMMED_BY"] == ["set", "fake-pyenv"] and delta["PATH"] == ["prepend", f"{bindir}:"]
    assert delta["DROPPED_BY_SHIM"] == ["unset"]
    assert hostcache.load(key)["python"] == sys.executable

    s = HostSession(inv, inv.host("here")).open()  # directly, with the shim's changes replayed
    try:
        assert s.agent.hello["env_delta"] is None  # it did not go through the shim
        assert s.call("exec", probe)["stdout"] == through_shim
    finally:
        s.close()


def test_without_the_replay_the_direct_start_would_differ(tmp_path, monkeypatch):
    """The twin: exec'd directly with no environment sent, the agent does not see the shim's."""
    from ops.agent import loginenv

    env = {"PATH": "/usr/bin", "DROPPED_BY_SHIM": "yes"}
    changes = loginenv.delta(env, {"PATH": "/v/bin:/usr/bin", "SHIMMED_BY": "x"})
    direct = dict(env)
    assert direct != {"PATH": "/v/bin:/usr/bin", "SHIMMED_BY": "x"}
    loginenv.apply(changes, direct)
    assert direct == {"PATH": "/v/bin:/usr/bin", "SHIMMED_BY": "x"}
