"""layout = "releases" end to end over the real sshd: each deploy is exported to
releases/<commit>, `shared` paths are linked in, the build runs there before the stop, `current`
is switched atomically, the last N releases are kept, and a rollback is a switch back that works
even when the commit is gone from the host's repository."""

from __future__ import annotations

import json
import os
import shutil

from ops import inventory
from tests.harness import git, wait_until
from tests.integration.deploykit import (
    break_daemon,
    commit_file,
    health_commit,
    make_repo,
    run_inv,
    stop_everything,
    write_inventory,
)


def serves(inv_path, commit: str) -> None:
    inv = inventory.load(inv_path)
    wait_until(lambda: health_commit(inv, "box") == commit, timeout=15, message=f"serving {commit[:8]}")


def test_releases_layout_deploys_switches_keeps_and_rolls_back_by_switching(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    root = tmp_path / "hosts/box/app"
    built = tmp_path / "built.log"
    inv_path = write_inventory(
        tmp_path, sshd, {"box": "opstest"}, checkout=root,
        extra=('layout = "releases"\nshared = ["data"]\nkeep = 2\n'
               f'build = ["mkdir -p .venv && echo $OPS_COMMIT > .venv/built && pwd >> {built} '
               '&& echo $OPS_COMMIT >> data/builds"]'))
    used.append(inv_path)
    assert inventory.load(inv_path).hosts["box"].path == f"{root}/current"
    a = git(repo, "rev-parse", "HEAD")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.readlink(root / "current") == f"releases/{a}"
    assert (root / "releases" / a / "data").is_symlink()
    assert os.path.realpath(root / "releases" / a / "data") == str(root / "shared/data")
    assert (root / "releases" / a / ".venv/built").read_text().strip() == a  # built in the release
    assert built.read_text().split() == [str(root / "releases" / a)]
    serves(inv_path, a)

    b = commit_file(repo, "B", "B", "B")
    c = commit_file(repo, "C", "C", "C")
    git(repo, "checkout", "-q", b)
    r = run_inv(inv_path, repo, "deploy", "--allow-dirty")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("box: ")]
    assert steps.index("build") < steps.index("stop") < steps.index("switch") < steps.index("start")
    git(repo, "checkout", "-q", "main")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    serves(inv_path, c)
    # keep = 2: A is gone, B (the rollback target) and C remain; the shared data survived all
    assert sorted(os.listdir(root / "releases")) == sorted([b, c])
    assert (root / "shared/data/builds").read_text().split() == [a, b, c]

    # rollback is a switch back: no delivery from the repository, no build - even with it gone
    shutil.rmtree(root / ".repo")
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reusing releases/" + b[:12] in r.stdout and "box: rollback-build" not in r.stdout
    assert "box: build" not in r.stdout
    assert os.readlink(root / "current") == f"releases/{b}"
    serves(inv_path, b)

    # a deploy that fails to start is rolled back by switching current back (the repository is
    # still gone: it is re-created and sent a full bundle, not one thin over what it lost)
    bad = break_daemon(repo)
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "box: rollback-switch ok" in r.stdout
    assert os.readlink(root / "current") == f"releases/{b}"
    serves(inv_path, b)
    record = json.loads((tmp_path / "hosts/box/state/deploy.json").read_text())
    assert record["current"] == b and bad in record["rolled_back"]


def test_releases_layout_a_failed_export_switches_nothing(tmp_path, sshd, used):
    from tests.integration.deploykit import small_tmpfs

    repo = make_repo(tmp_path)
    with small_tmpfs(tmp_path / "fs", 2048) as fs:
        root = fs / "app"
        inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, checkout=root,
                                   extra='layout = "releases"')
        used.append(inv_path)
        a = git(repo, "rev-parse", "HEAD")
        assert run_inv(inv_path, repo, "deploy").returncode == 0
        (repo / "data.bin").write_bytes(b"\0" * (4 << 20))
        git(repo, "add", "data.bin")
        git(repo, "commit", "-qm", "big file")
        r = run_inv(inv_path, repo, "deploy")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "was not written" in out and "nothing was switched" in out
        assert "box: stop" not in out
        assert os.readlink(root / "current") == f"releases/{a}"
        assert [d for d in os.listdir(root / "releases")] == [a]  # no half-exported release left
        serves(inv_path, a)
        stop_everything([inv_path])


def test_releases_layout_a_failed_build_switches_nothing_and_is_rebuilt_next_time(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    root = tmp_path / "hosts/box/app"
    flag = tmp_path / "build-may-pass"
    inv_path = write_inventory(
        tmp_path, sshd, {"box": "opstest"}, checkout=root,
        extra=(f'layout = "releases"\n'
               f'build = ["test -e {flag} && touch built-here || (echo no flag; exit 2)"]'))
    used.append(inv_path)
    flag.touch()
    a = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    flag.unlink()
    b = commit_file(repo, "B", "B", "B")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "exited with code 2" in r.stdout and "no flag" in r.stdout and "box: stop" not in r.stdout
    assert os.readlink(root / "current") == f"releases/{a}"
    serves(inv_path, a)
    # the release that failed its build is not reused as it is: exported and built again
    flag.touch()
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reusing" not in r.stdout and "box: build ok" in r.stdout
    assert (root / "releases" / b / "built-here").exists()
    serves(inv_path, b)


def test_releases_layout_in_pull_mode_fetches_into_the_hosts_repository(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    root = tmp_path / "hosts/box/app"
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, checkout=root,
                               extra='layout = "releases"\nsource = "pull"')
    used.append(inv_path)
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 1 and "clone it on the host first" in r.stdout, r.stdout + r.stderr
    git(tmp_path, "clone", "-q", str(origin), str(root / ".repo"))
    b = commit_file(repo, "B", "B", "B")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.readlink(root / "current") == f"releases/{b}"
    serves(inv_path, b)
