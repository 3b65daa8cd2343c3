"""Deploy hooks end to end (real git, real demo services, `inv deploy` on the local host and over
the real sshd): hooks run at their points in order, are journaled as steps, and a failing hook
fails the deploy and rolls it back like a built-in step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops import control, deploy, inventory
from ops.errors import InventoryError
from ops.session import connect
from tests.harness import git
from tests.integration.test_deploy import (  # noqa: F401
    cleanup_hosts,
    health_commit,
    repo,
    run_inv,
    write_inventory,
)

HOOKS = """
[hooks.mark_deliver]
cmd = ["sh", "-c", "echo after_deliver >> ${state_dir}/hooks.log"]

[hooks.no_broken]
cmd = "test ! -e examples/demo/BROKEN || { echo 'BROKEN marker present' >&2; exit 3; }"

[hooks.mark_stop]
cmd = ["sh", "-c", "echo before_stop >> ${state_dir}/hooks.log"]

[hooks.running]
call = "deploy_steps:all_running"

[hooks.mark_verify]
cmd = ["sh", "-c", "echo after_verify >> ${state_dir}/hooks.log"]
timeout = 20
"""

STEPS_MODULE = '''
from ops import api


def all_running(s: api.Session) -> api.Check:
    """after_start: every service runs; record it next to the hooks log."""
    states = {r["name"]: r["state"] for r in s.status(health=False)}
    s.write_file(s.host.state_dir + "/hooks.log", (s.read_file(s.host.state_dir + "/hooks.log") or "")
                 + "after_start\\n")
    down = [n for n, st in states.items() if st != "running"]
    return api.Check(not down, "all running" if not down else "not running: " + ", ".join(down))
'''

POINTS = ('hooks = { after_deliver = ["mark_deliver", "no_broken"], before_stop = ["mark_stop"], '
          'after_start = ["running"], after_verify = ["mark_verify"] }')


@pytest.fixture(params=["local", "ssh"])
def hooked_host(request, tmp_path, sshd, cleanup_hosts) -> tuple[Path, str]:  # noqa: F811
    alias = "" if request.param == "local" else "opstest"
    path = write_inventory(tmp_path, sshd, {"box": alias}, extra=POINTS)
    path.write_text(path.read_text() + HOOKS)
    (tmp_path / "deploy_steps.py").write_text(STEPS_MODULE)
    cleanup_hosts(path)
    return path, "box"


def step_names(entry: dict) -> list[str]:
    return [s["name"] for s in entry["steps"]]


def test_hooks_run_at_their_points_and_a_failing_hook_rolls_the_deploy_back(hooked_host, repo) -> None:  # noqa: F811
    inv_path, host = hooked_host
    inv = inventory.load(inv_path)
    state = Path(inv.host(host).state_dir)
    first = git(repo, "rev-parse", "HEAD")

    r = run_inv(inv_path, repo, "deploy", "--host", host)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (state / "hooks.log").read_text().split() == ["after_deliver", "before_stop", "after_start",
                                                         "after_verify"]
    with connect(inv, inv.host(host)) as s:
        [entry] = deploy.journal(s)
    assert step_names(entry) == ["deliver", "hook mark_deliver", "hook no_broken", "hook mark_stop", "stop",
                                 "start", "hook running", "verify", "hook mark_verify"]
    assert next(s for s in entry["steps"] if s["name"] == "hook running")["detail"] == "all running"

    # a commit the after_deliver hook refuses: the deploy fails at the hook, before anything was
    # stopped, so the tree is put back and the old code keeps serving (nothing to roll back)
    with connect(inv, inv.host(host)) as s:
        before = {r["name"]: r["pid"] for r in control.status(s)}
    (repo / "examples/demo/BROKEN").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "broken")
    r = run_inv(inv_path, repo, "deploy", "--host", host)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN marker present" in r.stdout and "the old code kept running" in r.stdout
    assert health_commit(inv, host) == first
    with connect(inv, inv.host(host)) as s:
        entry = deploy.journal(s)[-1]
        assert {r["name"]: r["pid"] for r in control.status(s)} == before  # never stopped
    failed = next(s for s in entry["steps"] if not s["ok"])
    assert failed["name"] == "hook no_broken"
    assert failed["detail"].endswith("exit 3: BROKEN marker present")
    assert "stop" not in step_names(entry) and step_names(entry)[-1] == "restore"
    local = [json.loads(x) for x in (inv_path.parent / "journal.jsonl").read_text().splitlines()]
    assert [e["outcome"] for e in local] == ["ok", "failed"]


def test_a_failing_after_start_hook_rolls_back_to_the_previous_commit(tmp_path, sshd, repo,  # noqa: F811
                                                                     cleanup_hosts) -> None:  # noqa: F811
    path = write_inventory(tmp_path, None, {"box": ""}, extra='hooks = { after_start = ["gate"] }')
    path.write_text(path.read_text() + '\n[hooks.gate]\ncmd = "test ! -e examples/demo/NO_START"\n')
    cleanup_hosts(path)
    first = git(repo, "rev-parse", "HEAD")
    assert run_inv(path, repo, "deploy", "--host", "box").returncode == 0
    (repo / "examples/demo/NO_START").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "refused after start")
    r = run_inv(path, repo, "deploy", "--host", "box")
    assert r.returncode == deploy.EXIT_ROLLED_BACK, r.stdout + r.stderr
    inv = inventory.load(path)
    assert health_commit(inv, "box") == first
    with connect(inv, inv.host("box")) as s:
        entry = deploy.journal(s)[-1]
    assert [x["name"] for x in entry["steps"] if not x["ok"]] == ["hook gate"]
    assert step_names(entry)[:4] == ["deliver", "stop", "start", "hook gate"]


@pytest.mark.parametrize(("text", "where", "fragment"), [
    ('[hooks.a]\ntimeout = 3\n', "hooks.a", "needs exactly one of 'cmd' and 'call'"),
    ('[hooks.a]\ncmd = "x"\nwhen = 1\n', "hooks.a", "unknown key 'when'"),
    ('[hooks.a]\ncall = "not a call"\n', "hooks.a", "key 'call' must be 'module:function'"),
    ('[hooks.a]\ncmd = "x"\ntimeout = 0\n', "hooks.a", "key 'timeout' must be a number of seconds above 0"),
    ('[hooks.a]\ncmd = "x ${nope}"\n', "hooks.a", "uses unknown variable ${nope}"),
])
def test_a_bad_hook_table_names_it(tmp_path: Path, text: str, where: str, fragment: str) -> None:
    p = tmp_path / "hosts.toml"
    p.write_text('[hosts.h]\nlocal = true\npath = "/srv"\nservices = []\n'
                 'hooks = { after_start = ["a"] }\n\n' + text)
    with pytest.raises(InventoryError) as info:
        inventory.load(p)
    assert info.value.where == where and fragment in info.value.message, info.value.message


@pytest.mark.parametrize(("points", "fragment"), [
    ('{ after_lunch = ["a"] }', "key 'hooks' has unknown point 'after_lunch'"),
    ('{ after_start = ["b"] }', "key 'hooks.after_start' names hook 'b', which is not defined"),
    ('{ after_start = "a" }', "key 'hooks.after_start' must be a list of hook names"),
])
def test_a_bad_hook_point_names_the_host(tmp_path: Path, points: str, fragment: str) -> None:
    p = tmp_path / "hosts.toml"
    p.write_text(f'[hosts.h]\nlocal = true\npath = "/srv"\nservices = []\nhooks = {points}\n\n'
                 '[hooks.a]\ncmd = "true"\n')
    with pytest.raises(InventoryError) as info:
        inventory.load(p)
    assert info.value.where == "hosts.h" and fragment in info.value.message, info.value.message


def test_a_cmd_check_in_deploys_verify_step_fails_the_deploy_and_rolls_it_back(tmp_path, sshd, repo,  # noqa: F811
                                                                               cleanup_hosts) -> None:  # noqa: F811
    checks = ('overrides.demo_api.checks = ["tree", { cmd = "test ! -e examples/demo/NO_VERIFY", '
              'name = "no-marker" }, { tcp = "${port}" }]')
    path = write_inventory(tmp_path, None, {"box": ""}, extra=checks)
    cleanup_hosts(path)
    first = git(repo, "rev-parse", "HEAD")
    r = run_inv(path, repo, "deploy", "--host", "box")
    assert r.returncode == 0, r.stdout + r.stderr
    (repo / "examples/demo/NO_VERIFY").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fails its verify")
    r = run_inv(path, repo, "deploy", "--host", "box")
    assert r.returncode == deploy.EXIT_ROLLED_BACK, r.stdout + r.stderr
    inv = inventory.load(path)
    assert health_commit(inv, "box") == first
    with connect(inv, inv.host("box")) as s:
        entry = deploy.journal(s)[-1]
    failed = next(x for x in entry["steps"] if not x["ok"])
    assert failed["name"] == "verify" and "no-marker demo_api: `test ! -e examples/demo/NO_VERIFY` exited 1" \
        in failed["detail"]
    assert entry["steps"][-1]["name"] == "rollback-verify" and entry["steps"][-1]["ok"]


def test_dry_run_lists_the_hooks_and_runs_none(hooked_host, repo) -> None:  # noqa: F811
    inv_path, host = hooked_host
    r = run_inv(inv_path, repo, "deploy", "--host", host, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hooks after_deliver: mark_deliver, no_broken" in r.stdout
    assert "hooks after_start: running" in r.stdout
    state = Path(inventory.load(inv_path).host(host).state_dir)
    assert not (state / "hooks.log").exists()
    r = run_inv(inv_path, repo, "deploy", "--host", host, "--dry-run", "--json")
    assert json.loads(r.stdout)["hosts"][0]["plan"]["hooks"]["before_stop"] == ["mark_stop"]
