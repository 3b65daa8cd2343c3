"""The host's resolved interpreter, remembered per host: used directly next time, and forgotten
when a start through it fails (the agent then starts with the configured `python`)."""

from __future__ import annotations

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
