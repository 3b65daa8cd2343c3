"""Numeric flags: a bad value is one clear message naming the flag (exit 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ops.errors import UsageError
from ops.tasks import number

REPO = Path(__file__).resolve().parents[2]


def test_number_parses_and_names_the_flag_when_it_cannot():
    assert number("3", "serial", whole=True) == 3
    assert number("2.5", "lock-wait") == 2.5
    with pytest.raises(UsageError, match=r"--serial takes a whole number, got '2\.5'"):
        number("2.5", "serial", whole=True)
    with pytest.raises(UsageError, match="--lock-wait must be at least 0, got '-1'"):
        number("-1", "lock-wait")


@pytest.mark.parametrize("args", [
    ["deploy", "--serial", "abc"],
    ["deploy", "--lock-wait", "soon"],
    ["logs", "demo_api", "-n", "many"],
    ["verify.watch", "--seconds", "ten"],
    ["verify.restart", "demo_api", "--timeout", "x"],
])
def test_a_bad_numeric_flag_is_a_clear_error_not_a_traceback(args):
    r = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    flag = next(a for a in args if a.startswith("-"))
    assert f"error: {flag} takes a" in r.stderr


LOCAL_ONLY = {"hosts", "disconnect"}  # the tasks that never connect to a host


def test_every_task_that_connects_offers_no_persist_and_honours_it(monkeypatch):
    import os

    from ops import tasks

    for ctx in tasks.ns.to_contexts():
        if ctx.name in LOCAL_ONLY:
            assert "--no-persist" not in ctx.flags, ctx.name
            continue
        assert "--no-persist" in ctx.flags, f"{ctx.name} has no --no-persist"
    body = tasks.ns["verify.all"].body
    monkeypatch.delenv("OPS_NO_PERSIST", raising=False)
    monkeypatch.setenv("OPS_INVENTORY", "/nonexistent/hosts.toml")
    from invoke import Exit

    with pytest.raises(Exit) as stopped:  # the inventory is missing: the task stops, after the flag
        body(None, no_persist=True)
    assert stopped.value.code == 2
    assert os.environ.get("OPS_NO_PERSIST") == "1"
