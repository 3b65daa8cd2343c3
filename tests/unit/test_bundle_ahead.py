"""A deploy makes each host's bundle ahead (ops/deploy.py Bundles.make_ahead), over the commit the
local journal last saw a good deploy of that host to, while the host is being connected to; the
deliver then finds it made. A wrong guess only costs that background work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ops import deploy
from ops.errors import OpsError

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=ENV).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "a").write_text("1\n")
    git(r, "add", ".")
    git(r, "commit", "-qm", "one")
    first = git(r, "rev-parse", "HEAD")
    (r / "a").write_text("2\n")
    git(r, "commit", "-qam", "two")
    return r, first, git(r, "rev-parse", "HEAD")


def test_the_last_good_deploy_of_a_host_is_read_from_the_journals_tail(tmp_path, monkeypatch) -> None:
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("OPS_JOURNAL", str(journal))
    assert deploy.last_deployed("box") is None  # no journal yet
    lines = [{"host": "box", "outcome": "ok", "to": "aaa"}, "not json",
             {"host": "other", "outcome": "ok", "to": "bbb"}]
    journal.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    assert deploy.last_deployed("box") == "aaa"
    assert deploy.last_deployed("other") == "bbb"
    with journal.open("a") as f:
        f.write(json.dumps({"host": "box", "outcome": "rolled-back", "to": "ccc"}) + "\n")
    assert deploy.last_deployed("box") is None  # its last run did not end on that commit


def test_a_bundle_made_ahead_is_the_one_the_deliver_gets(repo) -> None:
    r, first, second = repo
    b = deploy.Bundles(str(r))
    try:
        b.make_ahead(second, first)
        for t in b._ahead:
            t.join(60)
        assert len(b._made) == 1
        ahead = b._made[(second, first)]
        assert b.path(second, first) == ahead  # found made, not made again
        assert b.path(second, "0" * 40) != ahead  # another basis: made then (a wrong guess)
    finally:
        b.close()
    assert not Path(ahead).exists()
    with pytest.raises(OpsError):
        b.path(second, first)  # nothing is made after close (no stray temp dir)


def test_close_waits_for_a_bundle_still_being_made_ahead(repo) -> None:
    r, first, second = repo
    b = deploy.Bundles(str(r))
    b.make_ahead(second, None)
    b.close()
    assert all(not t.is_alive() for t in b._ahead)
    assert b._dir is None


@pytest.mark.parametrize("device", ["/dev/full", "/dev/zero"])
def test_a_journal_that_is_a_device_is_never_read(monkeypatch, device) -> None:
    # /dev/zero and /dev/full never end: reading one "to its end" never returned
    monkeypatch.setenv("OPS_JOURNAL", device)
    assert deploy.last_deployed("box") is None
