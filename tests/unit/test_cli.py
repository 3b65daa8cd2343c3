"""The command line as people type it: invoke's parse errors exit 2 (bad arguments) with a
suggestion, -R/--dry is a dry run or refused, -H is --host, value flags say what they take, shell
completion offers host and service names, and a closed pipe ends quietly. All through the real
`inv` program (python -m invoke) and the `ops` console script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cli import completion_words

REPO = Path(__file__).resolve().parents[2]
OPS = [sys.executable, "-c", "import sys; sys.argv[0] = 'ops'; from ops.cli import main; main()"]


def inv(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def ops(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPS_INVENTORY": str(REPO / "hosts.toml")}
    return subprocess.run([*OPS, *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("run", [inv, ops], ids=["inv", "ops"])
@pytest.mark.parametrize(("args", "expected"), [
    (["status", "--hots", "x"], "error: unknown flag --hots for status; did you mean --host?"),
    (["stauts"], "error: unknown task or argument 'stauts'; did you mean status?"),
    (["verify.restrat", "demo_api"], "did you mean verify.restart?"),
    (["logs"], "error: logs needs SERVICE (one of: demo_api, demo_daemon, demo_worker)"),
    (["status", "--host"], "error: --host needs a value (--host HOST)"),
    (["--help", "stauts"], "did you mean status?"),
])
def test_a_parse_error_exits_2_with_a_suggestion(run, args, expected):
    r = run(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_a_task_flag_given_before_any_task_names_the_task_that_has_it():
    r = inv("--hots")
    assert r.returncode == 2
    assert "did you mean --host after a task name" in r.stderr


def test_a_well_formed_command_line_still_parses():
    r = inv("--help", "status")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_numeric_and_name_flags_show_what_they_take_in_help():
    text = "".join(inv("--help", task).stdout for task in ("verify.restart", "deploy", "logs"))
    for spec in ("--timeout=SECONDS", "--lock-wait=SECONDS", "--serial=N", "--max-fail=N", "-n N",
                 "-H HOST, --host=HOST", "--ref=REF", "--signal=SIGNAL"):
        assert spec in text, spec
    assert "STRING" not in text
    assert "--service=SERVICE" in inv("--help", "status").stdout


def test_dash_capital_h_is_host():
    r = inv("status", "-H", "nope")
    assert r.returncode == 2
    assert "no host or group named 'nope'" in r.stderr


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this repository with this worktree's code committed in it: deploy's clean-tree
    rule holds there, and nothing it does touches this worktree."""
    dest = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    subprocess.run(["rm", "-rf", str(dest / "ops"), str(dest / "tasks.py")], check=True)
    subprocess.run(["cp", "-r", str(REPO / "ops"), str(REPO / "tasks.py"), str(dest)], check=True)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the worktree's code"], check=True)
    return dest


def untracked_ok(clone: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(clone)}


def test_core_dry_flag_makes_deploy_a_dry_run_that_changes_nothing(clone):
    dry = inv("-R", "deploy", "--host", "local", cwd=clone, env=untracked_ok(clone))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = inv("deploy", "--host", "local", "--dry-run", cwd=clone, env=untracked_ok(clone))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    def timeless(text: str) -> str:
        return re.sub(r"\d+\.\d+s", "T", text)

    assert timeless(dry.stdout) == timeless(planned.stdout)
    assert "plan" in dry.stdout.lower()
    assert not (clone / ".ops" / "local" / "checkout").exists(), "-R must not deploy"


@pytest.mark.parametrize("args", [["start"], ["stop"], ["restart"], ["verify.restart", "demo_api"],
                                  ["verify.all"], ["unlock"]])
def test_core_dry_flag_is_refused_by_a_task_that_acts_without_a_plan(clone, args):
    r = inv("-R", *args, cwd=clone, env=untracked_ok(clone))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "-R/--dry" in r.stderr and "nothing was done" in r.stderr
    assert not (clone / ".ops").exists(), "nothing may have touched the host"


def test_core_dry_flag_lets_a_read_only_task_run(clone):
    r = inv("-R", "hosts", cwd=clone, env=untracked_ok(clone))
    assert r.returncode == 0, r.stderr
    assert "demo_api" in r.stdout


def complete(line: str) -> list[str]:
    r = inv("--complete", "--", *line.split(" "))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_completion_offers_hosts_groups_and_all_after_host_flags():
    assert complete("inv status --host ") == ["local", "all"]
    assert complete("inv deploy -H lo") == ["local", "all"]  # the shell filters by the prefix


def test_completion_offers_service_names_after_service_and_for_a_service_argument():
    services = ["demo_api", "demo_daemon", "demo_worker"]
    assert complete("inv status --service ") == services
    assert complete("inv logs ") == services
    assert complete("inv verify.restart demo_") == services


def test_completion_still_offers_tasks_and_flags_elsewhere():
    assert "deploy" in complete("inv ")
    assert "--host" in complete("inv status --")


def test_completion_words_without_an_inventory_is_empty_not_an_error():
    assert completion_words(["status", "--host", ""], lambda: None, {}) == []
    assert completion_words(["status", ""], lambda: None, {"logs": ["service"]}) is None


def test_completion_after_a_whole_service_argument_goes_back_to_invoke():
    assert "--follow" in complete("inv logs demo_api --")
    assert "demo_api" not in complete("inv logs demo_api ")
    assert "--host" in complete("inv status --ho")  # a flag being typed is invoke's to complete


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_code():
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--list"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 141
