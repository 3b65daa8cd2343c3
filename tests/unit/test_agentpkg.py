"""The agent zipapp: deterministic bytes, a version that is the hash of its sources, the exact shell
commands that run and install it, and a built zip that really answers over stdin/stdout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ops import agentpkg


@pytest.fixture(autouse=True)
def _fresh_bundle_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPS_CACHE_DIR", str(tmp_path / "client-cache"))
    agentpkg.bundle.cache_clear()
    yield
    agentpkg.bundle.cache_clear()


@pytest.fixture
def agent_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of ops/agent that bundle() builds from."""
    copy = tmp_path / "agent"
    shutil.copytree(agentpkg.AGENT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(agentpkg, "AGENT_DIR", copy)
    return copy


def test_the_zipapp_is_the_same_bytes_every_time():
    first = agentpkg.build(agentpkg.AGENT_DIR)
    second = agentpkg.build(agentpkg.AGENT_DIR)
    assert first.data == second.data
    assert first.version == second.version
    assert agentpkg.bundle() == first


def test_the_version_is_a_content_hash_not_a_path(agent_copy):
    original = agentpkg.build(Path(agentpkg.__file__).parent / "agent")
    assert agentpkg.bundle().version == original.version
    assert len(original.version) == 16 and int(original.version, 16) >= 0
    assert original.filename == f"agent-{original.version}.pyz"


def test_the_version_changes_when_an_agent_source_changes(agent_copy):
    before = agentpkg.bundle()
    server = agent_copy / "server.py"
    server.write_text(server.read_text() + "\n# changed\n")
    agentpkg.bundle.cache_clear()
    after = agentpkg.bundle()
    assert after.version != before.version
    assert after.data != before.data


def test_the_version_changes_when_an_agent_module_is_added(agent_copy):
    before = agentpkg.bundle().version
    (agent_copy / "extra.py").write_text("X = 1\n")
    agentpkg.bundle.cache_clear()
    assert agentpkg.bundle().version != before


def test_the_zip_holds_the_agent_sources_and_a_main_only():
    b = agentpkg.bundle()
    with zipfile.ZipFile(io.BytesIO(b.data)) as zf:
        names = zf.namelist()
        main = zf.read("__main__.py").decode()
    expected = sorted(f"ops/agent/{p.name}" for p in agentpkg.AGENT_DIR.glob("*.py"))
    sources = ["ops/__init__.py", *expected]
    # the sources, the main, then each source's bytecode for this Python (agentpkg._pyc)
    assert names == [*sources, "__main__.py", *(n + "c" for n in sources)]
    assert main == f"from ops.agent import server\nserver.main(version={b.version!r})\n"


def test_the_run_command_is_exactly():
    b = agentpkg.AgentBundle(version="0123456789abcdef", data=b"")
    assert agentpkg.run_command("python3", b) == (
        'f="${XDG_CACHE_HOME:-$HOME/.cache}/ops-agent"/agent-0123456789abcdef.pyz; '
        'if [ -f "$f" ]; then ' + LOGIN + 'exec python3 -S "$f"; '
        'else echo \'{"event":"need-agent"}\'; fi'
    )


LOGIN = "OPS_LOGIN_ENV=$(env -0 2>/dev/null | od -An -vtx1 | tr -d ' \\n') "


def test_the_run_command_with_a_resolved_interpreter_is_exactly():
    b = agentpkg.AgentBundle(version="0123456789abcdef", data=b"")
    assert agentpkg.run_command("python3", b, resolved="/opt/py 3/bin/python3") == (
        'f="${XDG_CACHE_HOME:-$HOME/.cache}/ops-agent"/agent-0123456789abcdef.pyz; '
        "if [ -f \"$f\" ]; then if [ -x '/opt/py 3/bin/python3' ]; then OPS_ENV_STDIN=1 exec "
        "'/opt/py 3/bin/python3' "
        '-S "$f"; fi; ' + LOGIN + 'exec python3 -S "$f"; '
        'else echo \'{"event":"need-agent"}\'; fi'
    )


def test_a_resolved_interpreter_that_is_gone_falls_back_to_the_configured_one(tmp_path):
    b = agentpkg.bundle()
    cache = tmp_path / "cache"
    assert _sh(agentpkg.install_command(b), cache, stdin=b.data).returncode == 0
    gone = _sh(agentpkg.run_command(sys.executable, b, resolved=str(tmp_path / "no-such-python")), cache)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout.splitlines()[0])["executable"] == sys.executable
    direct = _sh(agentpkg.run_command("no-such-python3", b, resolved=sys.executable), cache)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout.splitlines()[0])["event"] == "hello"


def test_the_run_command_quotes_the_interpreter():
    b = agentpkg.AgentBundle(version="0123456789abcdef", data=b"")
    cmd = agentpkg.run_command("/opt/my python/bin/python3; rm -rf ~", b)
    assert "exec '/opt/my python/bin/python3; rm -rf ~' -S \"$f\"" in cmd


def test_the_install_command_is_exactly():
    b = agentpkg.AgentBundle(version="0123456789abcdef", data=b"")
    assert agentpkg.install_command(b) == (
        'd="${XDG_CACHE_HOME:-$HOME/.cache}/ops-agent"; mkdir -p "$d" && chmod 700 "$d" && '
        't="$d/.tmp.$$" && cat > "$t" && mv -f "$t" "$d/agent-0123456789abcdef.pyz"'
    )


def _sh(command: str, cache: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(["/bin/sh", "-c", command], input=stdin, env=env, capture_output=True, timeout=30)


def test_the_commands_ship_once_then_run_the_agent(tmp_path):
    b = agentpkg.bundle()
    cache = tmp_path / "cache"
    missing = _sh(agentpkg.run_command(sys.executable, b), cache)
    assert missing.returncode == 0
    assert json.loads(missing.stdout) == {"event": "need-agent"}

    installed = _sh(agentpkg.install_command(b), cache, stdin=b.data)
    assert installed.returncode == 0, installed.stderr
    target = cache / "ops-agent" / b.filename
    assert target.read_bytes() == b.data
    assert (cache / "ops-agent").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (cache / "ops-agent").iterdir()] == [b.filename]  # no temp file left

    ran = _sh(agentpkg.run_command(sys.executable, b), cache)  # stdin closed: hello, then exit 0
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[0])["event"] == "hello"


def test_the_built_zip_answers_hello_and_ping(tmp_path):
    b = agentpkg.bundle()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    request = json.dumps({"id": 7, "op": "ping", "args": {}}) + "\n"
    # A clean environment: the zip must not lean on this checkout being importable.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    r = subprocess.run(
        ["python3", str(pyz)],
        input=request,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    hello, result = (json.loads(line) for line in r.stdout.splitlines())
    assert hello["event"] == "hello"
    assert hello["version"] == b.version
    assert hello["pid"] > 0 and hello["python"].count(".") == 2
    assert result["id"] == 7 and result["event"] == "result"
    assert result["data"]["pong"] is True


def test_an_unknown_op_is_an_error_event_and_the_agent_keeps_serving(tmp_path):
    b = agentpkg.bundle()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    requests = '{"id": 1, "op": "nope"}\n{"id": 2, "op": "ping"}\n'
    r = subprocess.run(["python3", str(pyz)], input=requests, capture_output=True, text=True, timeout=30)
    events = [json.loads(line) for line in r.stdout.splitlines()[1:]]
    assert events[0] == {"id": 1, "event": "error", "type": "protocol", "message": "unknown op 'nope'"}
    assert events[1]["id"] == 2 and events[1]["event"] == "result"


def test_the_bundled_bytecode_is_what_a_same_version_python_imports(tmp_path):
    """The agent's modules load from the bundled .pyc (no compile on the host), and the .pyc holds
    exactly the bundled source's code."""
    b = agentpkg.bundle()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ops.agent.server as s; "
        "print(s.__spec__.loader.get_filename('ops.agent.server'))"
    )
    r = subprocess.run([sys.executable, "-c", probe, str(pyz)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ops/agent/server.pyc")
    with zipfile.ZipFile(io.BytesIO(b.data)) as zf:
        source, pyc = zf.read("ops/agent/server.py"), zf.read("ops/agent/server.pyc")
    import importlib.util
    import marshal

    assert pyc[:4] == importlib.util.MAGIC_NUMBER and pyc[8:16] == importlib.util.source_hash(source)
    assert marshal.loads(pyc[16:]) == compile(source, "ops/agent/server.py", "exec", dont_inherit=True)


def test_bytecode_of_another_python_version_is_skipped_for_the_source(tmp_path):
    """A host whose python3 is another version ignores the .pyc (bad magic) and runs the source."""
    b = agentpkg.bundle()
    src = io.BytesIO(b.data)
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(".pyc"):
                data = b"\0\0\r\n" + data[4:]  # another interpreter's magic number
            zout.writestr(info, data)
    pyz = tmp_path / b.filename
    pyz.write_bytes(out.getvalue())
    r = subprocess.run([sys.executable, str(pyz)], input='{"id": 1, "op": "ping"}\n', capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[1])["data"]["pong"] is True


def test_many_host_threads_asking_at_once_build_the_agent_once(monkeypatch):
    import threading
    import time

    calls = []

    def slow_build(agent_dir):
        calls.append(agent_dir)
        time.sleep(0.05)  # long enough for every thread to ask while the first one builds
        return agentpkg.AgentBundle(version="0123456789abcdef", data=b"zip")

    monkeypatch.setattr(agentpkg, "build", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(agentpkg.bundle())) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert len(got) == 10 and all(b is got[0] for b in got)


def test_a_built_agent_is_cached_on_disk_and_read_back_without_building(monkeypatch):
    first = agentpkg.bundle()
    cached = list(agentpkg.local_cache_dir().iterdir())
    assert [p.name for p in cached] == [
        f"agent-{first.version}.{hashlib.sha256(first.data).hexdigest()[:32]}.pyz"]

    def no_build(agent_dir):
        raise AssertionError("built again although a good copy is cached")

    monkeypatch.setattr(agentpkg, "build", no_build)
    agentpkg.bundle.cache_clear()
    assert agentpkg.bundle() == first


def test_a_damaged_cached_agent_is_built_again(monkeypatch):
    first = agentpkg.bundle()
    (cached,) = agentpkg.local_cache_dir().iterdir()
    cached.write_bytes(first.data[:-10] + b"0123456789")  # same size, other bytes
    builds = []
    real_build = agentpkg.build
    monkeypatch.setattr(agentpkg, "build", lambda d: builds.append(d) or real_build(d))
    agentpkg.bundle.cache_clear()
    assert agentpkg.bundle() == first
    assert len(builds) == 1
    assert cached.read_bytes() == first.data  # repaired


def test_a_changed_agent_source_misses_the_cache(agent_copy):
    before = agentpkg.bundle()
    server = agent_copy / "server.py"
    server.write_text(server.read_text() + "\n# changed\n")
    agentpkg.bundle.cache_clear()
    after = agentpkg.bundle()
    assert after.version != before.version
    assert after == agentpkg.build(agent_copy)
    assert len(list(agentpkg.local_cache_dir().iterdir())) == 2


def test_an_unwritable_cache_only_costs_the_build(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("OPS_CACHE_DIR", str(blocker / "ops"))
    assert agentpkg.bundle() == agentpkg.build(agentpkg.AGENT_DIR)
