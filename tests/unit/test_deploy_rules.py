"""Deploy rules a user sees: one clean-tree rule for deploy and preflight (an untracked file blocks
both, an ignored one neither), and the summary time that includes connecting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops.deploy import local_source
from ops.errors import UsageError


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / ".gitignore").write_text("*.log\n")
    (r / "app.py").write_text("print('hi')\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "one")
    return r


def test_an_untracked_file_blocks_deploy_naming_it(repo):
    (repo / "new_module.py").write_text("x = 1\n")
    with pytest.raises(UsageError) as info:
        local_source(str(repo))
    assert "1 untracked" in info.value.message and "new_module.py" in info.value.message
    assert "--allow-dirty" in info.value.advice
    assert local_source(str(repo), allow_dirty=True).dirty  # allowed, and still reported


def test_an_ignored_file_blocks_nothing_and_a_clean_tree_deploys(repo):
    (repo / "run.log").write_text("noise\n")
    assert local_source(str(repo)).dirty == ()


def test_preflight_clean_check_follows_the_same_rule(repo):
    from ops.gitinfo import Git

    (repo / "run.log").write_text("noise\n")
    assert Git(str(repo)).status() == []
    (repo / "new_module.py").write_text("x = 1\n")
    assert Git(str(repo)).status() == ["?? new_module.py"]


def test_the_deploy_summary_time_includes_connecting(repo, tmp_path, monkeypatch):
    """A host whose connection takes 0.4 s: the time reported for it is at least that."""
    from contextlib import contextmanager

    from ops import deploy, inventory, session

    inv_path = tmp_path / "hosts.toml"
    inv_path.write_text(f'[hosts.h]\nlocal = true\npath = "{tmp_path}/checkout"\n'
                        f'state_dir = "{tmp_path}/state"\nservices = ["a"]\n'
                        '\n[services.a]\ncmd = "sleep 100"\n')
    inv = inventory.load(inv_path)
    real = session.connect

    @contextmanager
    def slow_connect(inv_, host):
        import time

        time.sleep(0.4)
        with real(inv_, host) as s:
            yield s

    monkeypatch.setattr(deploy, "connect", slow_connect)
    opts = deploy.DeployOptions(dry_run=True, repo=str(repo))
    [result] = deploy.deploy(inv, list(inv.hosts.values()), opts)
    assert result.outcome == "planned"
    assert result.duration >= 0.4
