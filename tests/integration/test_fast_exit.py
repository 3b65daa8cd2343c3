"""The CLI leaves without the interpreter's teardown once its task is done, with the same exit code
and all of its output, and only when it is the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = (
    "import atexit, sys, runpy\n"
    "marker = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(marker, 'w').write('teardown ran'))\n"
    "sys.argv[0] = 'inv'\n"
    "runpy.run_module('invoke', run_name='__main__')\n"
)


def _inv(tmp_path: Path, *args: str, fast: bool = True) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / f"marker-{len(list(tmp_path.iterdir()))}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OPS_INVENTORY=str(tmp_path / "hosts.toml"))
    env.pop("OPS_NO_FAST_EXIT", None)
    if not fast:
        env["OPS_NO_FAST_EXIT"] = "1"
    r = subprocess.run([sys.executable, "-c", LAUNCH, str(marker), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return r, marker


def _inventory(tmp_path: Path, hosts: int) -> None:
    text = ['[services.s]\ncmd = "sleep 1000"\n']
    for i in range(hosts):
        text.append(f'[hosts.h{i:03d}]\nssh = "127.0.0.1:1"\nservices = ["s"]\npath = "/tmp/x"\n')
    (tmp_path / "hosts.toml").write_text("\n".join(text))


def test_a_finished_task_skips_teardown_and_keeps_its_whole_output(tmp_path):
    _inventory(tmp_path, 300)  # a long listing: a pipe's buffer is flushed before leaving
    r, marker = _inv(tmp_path, "hosts", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["hosts"]) == 300
    assert not marker.exists()  # the interpreter's own atexit hooks did not run


def test_without_fast_exit_the_same_task_tears_down_as_usual(tmp_path):
    _inventory(tmp_path, 300)
    r, marker = _inv(tmp_path, "hosts", "--json", fast=False)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["hosts"]) == 300
    assert marker.read_text() == "teardown ran"


def test_a_failed_task_leaves_fast_with_its_exit_code_and_message(tmp_path):
    _inventory(tmp_path, 1)
    r, marker = _inv(tmp_path, "status", "--host", "h000")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "h000" in r.stdout + r.stderr
    assert not marker.exists()


def test_bad_input_still_exits_2_with_its_message(tmp_path):
    (tmp_path / "hosts.toml").write_text("[hosts.x]\nnope = 1\n")
    r, _ = _inv(tmp_path, "hosts")
    assert r.returncode == 2
    assert "hosts.toml" in r.stderr and "Traceback" not in r.stderr
