"""`build` steps end to end over the real sshd: they run in the delivered code while the old
services still serve; a failed build shows its (bounded, redacted) output tail, restores the tree
and changes nothing that runs."""

from __future__ import annotations

import json

from ops import inventory
from ops.session import connect
from tests.harness import git
from tests.integration.deploykit import (
    commit_file,
    health_commit,
    make_repo,
    run_inv,
    write_inventory,
)


def api_pid(inv_path) -> int:
    inv = inventory.load(inv_path)
    from ops import control

    with connect(inv, inv.hosts["box"]) as s:
        return {x["name"]: x["pid"] for x in control.status(s, health=False)}["demo_api"]


def test_build_runs_in_the_new_code_while_the_old_code_still_serves(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    state = tmp_path / "hosts/box/state"
    probe = (
        "import json, subprocess, sys, urllib.request\n"
        "port = int(sys.argv[1])\n"
        "served = json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=5).read())\n"
        "head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()\n"
        "open(sys.argv[2], 'a').write(json.dumps({'served': served['commit'], 'tree': head}) + '\\n')\n"
    )
    commit_file(repo, "build_probe.py", probe, "build probe")
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    first = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    port = inventory.load(inv_path).hosts["box"].service("demo_api").port
    # now declare the build (host-level, with a timeout): it records what served and what the tree was
    text = inv_path.read_text().replace(
        "connect_timeout = 3\n",
        f'connect_timeout = 3\nbuild = [{{ cmd = "python3 build_probe.py {port} {state}/build.jsonl", '
        'timeout = 60, name = "probe" }]\n', 1)
    inv_path.write_text(text)
    second = commit_file(repo, "NOTE", "second\n", "second")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "box: build ok" in r.stdout
    seen = [json.loads(x) for x in (state / "build.jsonl").read_text().splitlines()]
    # in the new tree, before the stop: the old commit was still being served
    assert seen == [{"served": first, "tree": second}]
    assert health_commit(inventory.load(inv_path), "box") == second


def test_a_failed_build_changes_nothing_that_runs_and_shows_its_redacted_tail(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    failing = (
        "import os, sys\n"
        "for i in range(500):\n"
        "    print(f'compiling module {i}', flush=True)\n"
        "print('token is ' + os.environ['DEMO_TOKEN'], file=sys.stderr, flush=True)\n"
        "print('error: missing dependency frobnicate', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    commit_file(repo, "build_fail.py", failing, "a build that fails")
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    first = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    pid = api_pid(inv_path)
    # the daemon's build step gets the daemon's env_file (so it can see DEMO_TOKEN)
    step = 'build = [{ cmd = "python3 build_fail.py", timeout = 60, name = "deps" }]\n'
    text = inv_path.read_text().replace('children = ["demo_api"]\n', 'children = ["demo_api"]\n' + step, 1)
    assert text != inv_path.read_text()
    inv_path.write_text(text)
    commit_file(repo, "NOTE", "second\n", "second")
    r = run_inv(inv_path, repo, "deploy")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "build step 'deps' exited with code 3" in out
    assert "error: missing dependency frobnicate" in out
    assert "token is ***" in out and "demo-token-4f1c9a7e" not in out  # redacted
    assert "compiling module 499" in out and "compiling module 100" not in out  # a bounded tail
    assert "box: stop" not in out  # nothing was stopped
    # the old code kept serving, the same process, and the tree is back at the old commit
    inv = inventory.load(inv_path)
    assert health_commit(inv, "box") == first
    assert api_pid(inv_path) == pid
    assert git(tmp_path / "hosts/box/checkout", "rev-parse", "HEAD") == first
    assert git(tmp_path / "hosts/box/checkout", "status", "--porcelain", "--untracked-files=no") == ""
    journal = (tmp_path / "hosts/box/state/journal.jsonl").read_text().splitlines()
    last = json.loads(journal[-1])
    assert last["outcome"] == "failed"
    assert [s["name"] for s in last["steps"]] == ["deliver", "build", "restore"]
    assert len(last["steps"][1]["output"]) <= 40


def test_a_build_step_that_hangs_is_killed_at_its_timeout(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(
        tmp_path, sshd, {"box": "opstest"},
        extra='build = [{ cmd = "echo waiting; sleep 300", timeout = 2, name = "hang" }]')
    used.append(inv_path)
    r = run_inv(inv_path, repo, "deploy")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "build step 'hang' timed out after 2s" in out
    assert "waiting" in out


def test_ctrl_c_during_the_build_restores_the_tree_and_stops_nothing(tmp_path, sshd, used):
    from tests.integration.deploykit import Output, spawn_inv

    repo = make_repo(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    first = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    pid = api_pid(inv_path)
    wait = (f"touch {marks}/building; i=0; while [ ! -e {marks}/go ] && [ $i -lt 600 ]; "
            "do sleep 0.1; i=$((i+1)); done")
    inv_path.write_text(inv_path.read_text().replace(
        "connect_timeout = 3\n", f'connect_timeout = 3\nbuild = [{{ cmd = "{wait}", timeout = 90 }}]\n', 1))
    commit_file(repo, "NOTE", "second\n", "second")
    proc = spawn_inv(inv_path, repo, "deploy")
    out = Output(proc)
    try:
        from tests.harness import wait_until

        wait_until(lambda: (marks / "building").exists(), timeout=30, message="the build started")
        proc.send_signal(2)
        out.wait_for("Ctrl-C again to abandon", timeout=20)
        (marks / "go").touch()
        text = out.finish(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    assert "box: restore ok" in text and "box: stop" not in text
    assert health_commit(inventory.load(inv_path), "box") == first
    assert api_pid(inv_path) == pid
    assert git(tmp_path / "hosts/box/checkout", "rev-parse", "HEAD") == first
