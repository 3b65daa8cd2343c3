"""The host checkout's facts (head, branch, local changes) from two git calls instead of five
(`git status --porcelain=v2 --branch`), the same as the long way on real repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops.agent import deployops
from ops.agent.deployops import checkout_info, parse_status_v2

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=ENV).stdout.strip()


def test_parse_status_v2_gives_head_branch_and_v1_style_changes() -> None:
    out = "\n".join([
        "# branch.oid 89d536842963f7387dcbdd12bf35e8cfdefd03e4",
        "# branch.head main",
        "1 .M N... 100644 100644 100644 7898 7898 a",
        "1 .D N... 100644 100644 000000 6178 6178 b c",
        "2 R. N... 100644 100644 100644 4bcf 4bcf R100 e\td",
        "1 A. N... 000000 100644 100644 0000 8ba3 new",
        "u UU N... 100644 100644 100644 100644 1111 2222 3333 both",
    ])
    assert parse_status_v2(out) == (
        "89d536842963f7387dcbdd12bf35e8cfdefd03e4", "main",
        [" M a", " D b c", "R  d -> e", "A  new", "UU both"])


def test_parse_status_v2_initial_and_detached() -> None:
    assert parse_status_v2("# branch.oid (initial)\n# branch.head main\n") == (None, "main", [])
    assert parse_status_v2("# branch.oid abc\n# branch.head (detached)\n") == ("abc", None, [])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "co"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "a").write_text("a\n")
    (r / "d").write_text("d\n")
    git(r, "add", ".")
    git(r, "commit", "-qm", "one")
    return r


def long_way(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """checkout_info as it was (five calls): status v2 made to fail, so the fallback runs."""
    real = deployops._git

    def no_v2(args, cwd, **kw):
        if "--porcelain=v2" in args:
            return 129, "", "unknown option"
        return real(args, cwd, **kw)

    monkeypatch.setattr(deployops, "_git", no_v2)
    try:
        return checkout_info(str(checkout))
    finally:
        monkeypatch.setattr(deployops, "_git", real)


def test_a_clean_checkout_on_a_branch(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = checkout_info(str(repo))
    assert info["git"] and info["head"] == git(repo, "rev-parse", "HEAD")
    assert info["branch"] == "main" and info["dirty"] == []
    assert info == long_way(repo, monkeypatch)


def test_a_detached_checkout_with_local_changes(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    git(repo, "checkout", "-q", "--detach")
    (repo / "a").write_text("changed\n")
    git(repo, "mv", "d", "e")
    info = checkout_info(str(repo))
    assert info["branch"] is None and info["head"] == git(repo, "rev-parse", "HEAD")
    assert info["dirty"] == [" M a", "R  d -> e"]
    old = long_way(repo, monkeypatch)
    # the long way lost the first line's leading blank (git's output was stripped as a whole)
    assert [d.strip() for d in old.pop("dirty")] == [d.strip() for d in info.pop("dirty")]
    assert info == old


def test_an_empty_repository_has_no_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = tmp_path / "empty"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    info = checkout_info(str(r))
    assert info["git"] and info["head"] is None and info["branch"] == "main"
    assert info == long_way(r, monkeypatch)


def test_a_directory_inside_another_repository_is_not_a_checkout(repo: Path) -> None:
    sub = repo / "sub"
    sub.mkdir()
    info = checkout_info(str(sub))
    assert info["git"] is False and info["empty"] is True
