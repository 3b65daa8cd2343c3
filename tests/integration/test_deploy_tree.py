"""The in-place delivered tree is verified after checkout and restored on failure: a checkout
that runs out of disk (a real small tmpfs) never goes live, and the old code keeps serving."""

from __future__ import annotations

import json

from ops import control, inventory
from ops.session import connect
from tests.harness import git
from tests.integration.deploykit import (
    health_commit,
    make_repo,
    run_inv,
    small_tmpfs,
    stop_everything,
    write_inventory,
)


def pids(inv_path) -> dict[str, int]:
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts["box"]) as s:
        return {x["name"]: x["pid"] for x in control.status(s, health=False)}


def test_a_checkout_that_fills_the_disk_is_refused_and_the_tree_restored(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    with small_tmpfs(tmp_path / "fs", 1024) as fs:
        checkout = fs / "checkout"
        inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, checkout=checkout)
        used.append(inv_path)
        first = git(repo, "rev-parse", "HEAD")
        r = run_inv(inv_path, repo, "deploy")
        assert r.returncode == 0, r.stdout + r.stderr
        before = pids(inv_path)
        # 4 MB of zeros: a few KB in the bundle and the object store, 4 MB in the work tree
        (repo / "data.bin").write_bytes(b"\0" * (4 << 20))
        git(repo, "add", "data.bin")
        git(repo, "commit", "-qm", "big file")
        r = run_inv(inv_path, repo, "deploy")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "restore: the tree is back at " + first[:12] in out, out
        assert "box: stop" not in out  # the corrupt tree never went live
        # the old code keeps serving, untouched, from a clean tree at the old commit
        assert health_commit(inventory.load(inv_path), "box") == first
        assert pids(inv_path) == before
        assert git(checkout, "rev-parse", "HEAD") == first
        assert git(checkout, "status", "--porcelain", "--untracked-files=no") == ""
        assert not (checkout / "data.bin").exists()
        last = json.loads((tmp_path / "hosts/box/state/journal.jsonl").read_text().splitlines()[-1])
        assert last["outcome"] == "failed"
        stop_everything([inv_path])  # before the tmpfs goes away
