"""The README's two top commands are what CI runs, on the distribution's python, and the setup
refuses an interpreter older than requires-python at once, with what to do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_top_commands() -> list[str]:
    """The indented command lines before the first section of the README."""
    head = (REPO / "README.md").read_text().split("\n## ", 1)[0]
    return [line.strip() for line in head.splitlines() if line.startswith("    ") and line.strip()]


def ci_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]


def test_the_readme_has_a_setup_and_deploy_command_and_a_test_command():
    setup, tests = readme_top_commands()
    assert setup.startswith("./bootstrap ") and "inv deploy --host local" in setup
    assert tests.startswith("./bootstrap --test ") and "-m pytest" in tests


def test_ci_runs_the_readme_commands_verbatim():
    lines = ci_lines()
    for command in readme_top_commands():
        assert command in lines or f"{command} || exit $?" in lines, (
            f".ci/run does not run the README command {command!r}")


def test_ci_uses_the_distribution_python_and_never_breaks_system_packages():
    text = (REPO / ".ci" / "run").read_text()
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in text
    assert "pip install" not in text, "CI installs only through ./bootstrap, as the README says"
    assert "export PATH=/usr/sbin:/usr/bin:/sbin:/bin" in text
    assert "!= /usr/bin/python3" in text


def test_bootstrap_and_ci_are_executable():
    for path in (REPO / "bootstrap", REPO / ".ci" / "run"):
        assert path.stat().st_mode & 0o111, path


def copy_bootstrap(tmp_path: Path, requires: str) -> Path:
    shutil.copy2(REPO / "bootstrap", tmp_path / "bootstrap")
    pyproject = (REPO / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(
        re.sub(r'^requires-python = ".*"$', f'requires-python = "{requires}"', pyproject, flags=re.M))
    return tmp_path / "bootstrap"


def test_a_python_older_than_requires_python_fails_at_once_saying_what_to_install(tmp_path):
    script = copy_bootstrap(tmp_path, ">=3.99")
    began = time.monotonic()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": "/usr/bin/python3"}
    r = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert time.monotonic() - began < 30
    assert "ops needs Python >= 3.99; /usr/bin/python3 is 3." in r.stderr
    assert "PYTHON=python3.99 ./bootstrap" in r.stderr
    assert not (tmp_path / ".venv").exists(), "nothing is installed for a python that cannot work"


def test_bootstrap_reads_the_version_it_checks_from_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=\d+\.\d+"$', text, re.M), (
        "bootstrap parses requires-python as \">=X.Y\"; keep that form")


def test_bootstrap_refuses_an_unknown_option(tmp_path):
    script = copy_bootstrap(tmp_path, ">=3.8")
    r = subprocess.run([str(script), "--tset"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option '--tset'" in r.stderr


def check_python(tmp_path: Path, requires: str) -> subprocess.CompletedProcess[str]:
    script = copy_bootstrap(tmp_path, requires)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable}
    return subprocess.run([str(script), "--check-python"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_version_check_passes_at_the_boundary_and_fails_one_minor_above(tmp_path):
    major, minor = sys.version_info[:2]
    assert check_python(tmp_path, f">={major}.{minor}").returncode == 0
    assert check_python(tmp_path, f">={major}.{minor - 1}").returncode == 0
    assert check_python(tmp_path, ">=3.8").returncode == 0
    r = check_python(tmp_path, f">={major}.{minor + 1}")
    assert r.returncode == 2 and f"ops needs Python >= {major}.{minor + 1}" in r.stderr
