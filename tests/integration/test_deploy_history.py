"""The deploy history end to end over the real sshd: every deployed commit pinned on the host,
rolled-back ones marked; `inv rollback` walks back through good deploys (twice ends on the older
good commit) and never re-deploys a rolled-back one; --to; a commit the host lost is sent as a
bundle or refused with advice; --dry-run says what the run would do."""

from __future__ import annotations

import json
import shutil

import pytest

from ops import inventory
from tests.harness import git, wait_until
from tests.integration.deploykit import (
    break_daemon,
    commit_file,
    health_commit,
    make_repo,
    run_inv,
    write_inventory,
)


@pytest.fixture
def three(tmp_path, sshd, used):
    """A host over SSH on which A, B and C were deployed, in that order."""
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    commits = [git(repo, "rev-parse", "HEAD")]
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    for name in ("B", "C"):
        commits.append(commit_file(repo, name, name, name))
        r = run_inv(inv_path, repo, "deploy")
        assert r.returncode == 0, r.stdout + r.stderr
    return repo, inv_path, commits


def record(tmp_path) -> dict:
    return json.loads((tmp_path / "hosts/box/state/deploy.json").read_text())


def serves(inv_path, commit: str) -> None:
    inv = inventory.load(inv_path)
    wait_until(lambda: health_commit(inv, "box") == commit, timeout=10, message=f"serving {commit[:8]}")


def test_rollback_twice_ends_on_the_older_good_commit(three, tmp_path):
    repo, inv_path, (a, b, c) = three
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, b)
    r = run_inv(inv_path, repo, "rollback")  # must not go back to C (it was rolled back)
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, a)
    rec = record(tmp_path)
    assert rec["current"] == a and set(rec["rolled_back"]) == {b, c}
    # nowhere left to go: the dry run says so (exit 1), and so does the real run, which changes nothing
    dry = run_inv(inv_path, repo, "rollback", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "no earlier good deploy" in dry.stdout
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 1 and "no earlier good deploy" in r.stdout, r.stdout + r.stderr
    serves(inv_path, a)
    # every deployed commit is pinned on the host
    pins = git(tmp_path / "hosts/box/checkout", "for-each-ref", "--format=%(objectname)", "refs/ops/history")
    assert set(pins.split()) == {a, b, c}


def test_rollback_skips_a_commit_whose_deploy_was_rolled_back(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    a = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    b = commit_file(repo, "B", "B", "B")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    bad = break_daemon(repo)
    assert run_inv(inv_path, repo, "deploy").returncode == 5  # rolled back to B
    assert bad in record(tmp_path)["rolled_back"]
    r = run_inv(inv_path, repo, "rollback", "--dry-run")
    assert r.returncode == 0 and f"{b[:10]} -> {a[:10]}" in r.stdout, r.stdout
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, a)


def test_rollback_to_a_named_commit(three, tmp_path):
    repo, inv_path, (a, b, c) = three
    r = run_inv(inv_path, repo, "rollback", "--to", a[:8])
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, a)
    assert c in record(tmp_path)["rolled_back"]
    r = run_inv(inv_path, repo, "rollback", "--to", "feedbeef")
    assert r.returncode == 1 and "--to feedbeef is neither" in r.stdout, r.stdout + r.stderr


def test_a_commit_the_host_lost_is_sent_as_a_bundle_or_refused_with_advice(three, tmp_path):
    repo, inv_path, (a, b, c) = three
    # the checkout is re-created (state_dir survives): the host no longer has B
    shutil.rmtree(tmp_path / "hosts/box/checkout")
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    dry = run_inv(inv_path, elsewhere, "rollback", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert f"commit {b[:12]} is not on the host" in dry.stdout and "git fetch" in dry.stdout
    r = run_inv(inv_path, elsewhere, "rollback")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"commit {b[:12]} is not on the host" in r.stdout and "Traceback" not in r.stderr
    assert "bug in the agent" not in r.stdout + r.stderr
    # from the repository that has it: the dry run says it will be bundled, and the run does it
    dry = run_inv(inv_path, repo, "rollback", "--dry-run")
    assert dry.returncode == 0 and "would be sent as a git bundle" in dry.stdout, dry.stdout + dry.stderr
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, b)


def test_rollback_on_a_host_with_no_deploy_fails_in_the_dry_run_as_in_the_real_run(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    for args in (("rollback", "--dry-run"), ("rollback",)):
        r = run_inv(inv_path, repo, *args)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "no deploy is recorded on the host" in r.stdout and "plan for" not in r.stdout
