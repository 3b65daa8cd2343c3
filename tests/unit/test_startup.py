"""Start-up: listing tasks stays light (no paramiko, fabric or rich), and the `ops` console script
runs the same tasks from any directory, finding the inventory by --inventory, $OPS_INVENTORY or
./hosts.toml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("paramiko", "fabric", "rich")

INVENTORY = """\
[hosts.{name}]
local = true
path = "/srv/app"
services = ["a"]

[services.a]
cmd = "sleep 100"
"""


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "OPS_INVENTORY"}
    full_env.update(env)
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output ("import time: self | cumulative | name")."""
    names = set()
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$", line)
        if m:
            names.add(m.group(2))
    return names


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture(scope="module")
def ops_script() -> str:
    beside = Path(sys.executable).parent / "ops"  # a venv's script, active or not (./bootstrap)
    path = str(beside) if beside.exists() else shutil.which("ops")
    assert path, "the `ops` console script is not installed: run ./bootstrap --test"
    return path


def test_inv_list_imports_no_paramiko_fabric_or_rich():
    r = run([sys.executable, "-X", "importtime", "-m", "invoke", "--list"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "status" in r.stdout and "hosts" in r.stdout
    modules = imported_modules(r.stderr)
    assert "ops.tasks" in modules  # the parse works: the task module was seen
    assert heavy_in(modules) == []


def test_the_import_check_sees_a_heavy_import():
    """The check above can fail: importing fabric shows up in the same parse."""
    r = run([sys.executable, "-X", "importtime", "-c", "import fabric"], cwd=REPO)
    assert {"fabric", "paramiko"} <= set(heavy_in(imported_modules(r.stderr)))


def test_importing_the_task_collection_stays_light():
    code = (
        "import sys, tasks\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'fabric', 'rich'))\n"
        "print(heavy)\n"
    )
    r = run([sys.executable, "-c", code], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_ops_list_works_from_another_directory(tmp_path, ops_script):
    r = run([ops_script, "--list"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("hosts", "status", "start", "stop", "logs"):
        assert re.search(rf"^\s+{name}\s", r.stdout, re.M), r.stdout


def test_ops_inventory_option_uses_that_file(tmp_path, ops_script):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "hosts.toml").write_text(INVENTORY.format(name="fromoption"))
    (tmp_path / "hosts.toml").write_text(INVENTORY.format(name="fromcwd"))
    r = run([ops_script, "--inventory", "conf/hosts.toml", "hosts"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path}/conf/hosts.toml: 1 host(s), valid" in r.stdout
    assert "fromoption" in r.stdout and "fromcwd" not in r.stdout


def test_ops_inventory_option_wins_over_the_environment(tmp_path, ops_script):
    (tmp_path / "a.toml").write_text(INVENTORY.format(name="fromoption"))
    (tmp_path / "b.toml").write_text(INVENTORY.format(name="fromenv"))
    r = run(
        [ops_script, "--inventory", "a.toml", "hosts"], cwd=tmp_path, OPS_INVENTORY=str(tmp_path / "b.toml")
    )
    assert r.returncode == 0, r.stderr
    assert "fromoption" in r.stdout and "fromenv" not in r.stdout


def test_ops_reads_ops_inventory(tmp_path, ops_script):
    (tmp_path / "x.toml").write_text(INVENTORY.format(name="fromenv"))
    r = run([ops_script, "hosts"], cwd=tmp_path, OPS_INVENTORY=str(tmp_path / "x.toml"))
    assert r.returncode == 0, r.stderr
    assert "fromenv" in r.stdout


def test_ops_falls_back_to_hosts_toml_in_the_current_directory(tmp_path, ops_script):
    (tmp_path / "hosts.toml").write_text(INVENTORY.format(name="fromcwd"))
    r = run([ops_script, "hosts"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fromcwd" in r.stdout


def test_ops_without_any_inventory_says_how_to_give_one(tmp_path, ops_script):
    r = run([ops_script, "hosts"], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "hosts.toml: no such inventory file" in r.stderr
    assert "--inventory PATH" in r.stderr


def test_inv_reads_ops_inventory(tmp_path):
    (tmp_path / "x.toml").write_text(INVENTORY.format(name="fromenv"))
    r = run([sys.executable, "-m", "invoke", "hosts"], cwd=REPO, OPS_INVENTORY=str(tmp_path / "x.toml"))
    assert r.returncode == 0, r.stderr
    assert "fromenv" in r.stdout and "demo_daemon" not in r.stdout


def _bytecode_flag_after_import(*python_flags: str, **env: str) -> str:
    """sys.dont_write_bytecode after invoke turned it off and then `ops` was imported."""
    code = "import sys; sys.dont_write_bytecode = True; import ops; print(sys.dont_write_bytecode)"
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    full_env.update(env)
    p = subprocess.run([sys.executable, *python_flags, "-c", code], cwd=REPO, env=full_env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_ops_caches_its_bytecode_although_invoke_turned_caching_off() -> None:
    # invoke sets sys.dont_write_bytecode before it imports tasks.py: without this every `inv`
    # compiled the whole ops package from source
    assert _bytecode_flag_after_import() == "False"


def test_ops_leaves_bytecode_off_when_the_person_asked_for_it() -> None:
    assert _bytecode_flag_after_import("-B") == "True"
    assert _bytecode_flag_after_import(PYTHONDONTWRITEBYTECODE="1") == "True"


def test_inv_writes_the_ops_package_bytecode_once(tmp_path: Path) -> None:
    # the second `inv` of a fresh copy reads every ops module from its cached bytecode
    copy = tmp_path / "proj"
    shutil.copytree(REPO / "ops", copy / "ops", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "tasks.py", copy / "tasks.py")
    (copy / "hosts.toml").write_text(INVENTORY.format(name="box"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "OPS_INVENTORY",
                                                             "PYTHONPYCACHEPREFIX")}
    env["PYTHONPATH"] = str(copy)
    inv = [sys.executable, "-c", "import sys; from invoke.main import program; sys.exit(program.run())",
           "--search-root", str(copy), "--list"]
    first = subprocess.run(inv, cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (copy / "ops" / "__pycache__").is_dir()
    assert any(p.name.startswith("cli.") for p in (copy / "ops" / "__pycache__").iterdir())
    second = subprocess.run(inv, cwd=copy, env={**env, "PYTHONVERBOSE": "1"}, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    compiled = re.findall(r"^# code object from (/\S+\.py)$", second.stderr, re.MULTILINE)
    # ops/__init__.py itself (a few lines) runs before it turns caching back on
    own = [p for p in compiled if p.startswith(str(copy / "ops")) and p != str(copy / "ops" / "__init__.py")]
    assert own == []
