"""Bad input on the client side: a clear message naming the flag / service / missing tool and its exit
code, decided before any host is touched, never a traceback. Run through the real command."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.errors import Unreachable, UsageError
from ops.report import Reporter
from ops.session import HostOutcome

REPO = Path(__file__).resolve().parents[2]


def _inventory(tmp_path: Path) -> Path:
    """A local host whose agent would fail loudly if it were ever started (python9)."""
    path = tmp_path / "hosts.toml"
    path.write_text(
        f"""
[hosts.box]
local = true
python = "python9"
path = "{tmp_path / 'checkout'}"
state_dir = "{tmp_path / 'state'}"
services = ["sup", "kid"]

[services.sup]
cmd = "python3 sup.py"
children = ["kid"]

[services.kid]
match = "kid.py"
"""
    )
    return path


def _inv(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, OPS_INVENTORY=str(_inventory(tmp_path)), **(env or {}))
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env=full, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (["status", "--service", "nope"], "host 'box' has no service named 'nope'"),
    (["verify.restart", "kid", "--signal", "FOO"], "--signal: unknown signal 'FOO'"),
    (["verify.watch", "--seconds", "0"], "--seconds must be more than 0, got '0'"),
])
def test_a_bad_flag_value_is_a_usage_error_before_any_host_is_touched(tmp_path, args, message):
    r = _inv(tmp_path, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {message}" in r.stderr
    assert "Traceback" not in r.stderr
    assert "python9" not in r.stdout + r.stderr  # no agent was started on the host


def test_signal_names_and_numbers_are_taken_as_the_agent_takes_them():
    from ops.verify import signal_name

    assert signal_name("KILL") == "KILL"
    assert signal_name("sigterm") == "TERM"
    assert signal_name("9") == "9"
    for bad in ("FOO", "0", "_DFL", ""):
        with pytest.raises(UsageError, match="--signal: unknown signal"):
            signal_name(bad)


def test_deploy_without_a_local_git_names_git_instead_of_a_traceback(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with this python and nothing else (no git)
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    r = _inv(tmp_path, "deploy", "--allow-dirty", env={"PATH": str(bin_dir)})
    assert "Traceback" not in r.stderr, r.stderr
    assert "error: git is not installed (no `git` on PATH)" in r.stderr
    assert r.returncode == 1


def test_a_host_error_shows_what_to_do_under_the_table():
    out = io.StringIO()
    err = Unreachable("box", "cannot connect to root@10.0.0.1:22")
    Reporter("plain", out=out).status([HostOutcome("box", error=err)])
    assert f"box: -> {Unreachable.advice}" in out.getvalue()


def test_rich_tables_show_brackets_in_cells_as_text():
    out = io.StringIO()
    Reporter("rich", out=out)._table("t", ["what", "detail"],
                                      [["python3 w.py  [gates: log]", "log line [/foo] and [p]hone"]])
    text = out.getvalue()
    assert "[gates: log]" in text and "[/foo]" in text and "[p]hone" in text
