"""deploy's pure parts and local git helpers: bundles, exit codes, lock descriptions, plans."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from ops import deploy
from ops.deploy import Bundles, HostDeploy, describe_lock, exit_code
from ops.errors import UsageError


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "r"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    for i in range(3):
        (r / f"f{i}").write_text("x" * 5000 + str(i))
        git(r, "add", "-A")
        git(r, "commit", "-qm", f"c{i}")
    return r


def test_parallel_hosts_share_one_bundle_without_racing_on_the_ref(repo):
    head = git(repo, "rev-parse", "HEAD")
    bundles = Bundles(str(repo))
    out: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            out.append(bundles.get(head, None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(out) == 12 and len(set(out)) == 1
    assert git(repo, "for-each-ref", "refs/ops") == ""  # the temporary ref is gone


def test_a_bundle_is_thin_over_what_the_host_has_and_fetchable(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    bundles = Bundles(str(repo))
    full, thin = bundles.get(head, None), bundles.get(head, first)
    assert len(thin) < len(full)
    # a basis the host has but that is not an ancestor (or unknown here) gives a full bundle
    assert bundles.get(head, "0" * 40) == full
    host = tmp_path / "host"
    subprocess.run(["git", "clone", "-q", str(repo), str(host)], check=True)
    git(host, "checkout", "-q", "--detach", first)
    (tmp_path / "b.bundle").write_bytes(thin)
    git(host, "fetch", "-q", str(tmp_path / "b.bundle"), "+refs/ops/deploy:refs/ops/deployed")
    assert git(host, "rev-parse", "refs/ops/deployed") == head


def test_local_source_refuses_a_dirty_tree_naming_files_and_the_flag(repo):
    (repo / "f1").write_text("edited")
    with pytest.raises(UsageError) as info:
        deploy.local_source(str(repo))
    assert "f1" in info.value.message and "--allow-dirty" in info.value.advice
    src = deploy.local_source(str(repo), allow_dirty=True)
    assert src.dirty and src.commit == git(repo, "rev-parse", "HEAD")


def test_local_source_names_an_unknown_ref(repo):
    with pytest.raises(UsageError, match="unknown commit 'nope'"):
        deploy.local_source(str(repo), ref="nope")


@pytest.mark.parametrize(("outcomes", "code"), [
    (["ok", "ok"], 0),
    (["ok", "rolled-back"], deploy.EXIT_ROLLED_BACK),
    (["ok", "locked"], 4),
    (["unreachable", "ok"], 3),
    (["interrupted", "skipped"], 130),
    (["rolled-back", "failed"], 1),
    (["unreachable", "rolled-back"], 1),
])
def test_exit_code_says_how_the_run_ended(outcomes, code):
    results = [HostDeploy(host=f"h{i}", run_id="r", outcome=o) for i, o in enumerate(outcomes)]
    assert exit_code(results) == code


def test_a_lock_description_names_holder_run_commit_and_how_to_break_a_stale_one():
    text = describe_lock("panda", {"user": "alice", "machine": "laptop", "run_id": "r-9",
                                   "commit": "0123456789abcdef", "since": 0.0, "stale": True})
    assert text.startswith("panda: deploy lock held by alice@laptop (run r-9, commit 0123456789ab)")
    assert "inv unlock --host panda" in text
    live = describe_lock("panda", {"user": "bob", "machine": "m", "stale": False})
    assert "unlock" not in live
