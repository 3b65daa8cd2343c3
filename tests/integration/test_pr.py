"""`inv pr` end to end: real git repositories (a bare "origin" in a temp dir), the remote test run
and the deploy history over the real sshd (two real `deploy`s, so the host records the commit
deployed before the branch), the real `inv` command, and `gh` as a fake executable on PATH that
records its argv and the body file it was given (no forge is reachable from the test machines).

Shown: the PR is opened only from a green pre-flight, with the exact body; the rollback command in
the body really rolls the host back; a red pre-flight calls no gh and writes no body; a missing or
unauthenticated gh, or an unpushed branch, leaves the body to paste; a stacked PR on its parent's
branch with a user template.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops import deploy, inventory
from ops.deploy import DeployOptions
from tests.harness import SshServer
from tests.integration import test_preflight as tp

pytestmark = pytest.mark.ssh

origin = tp.origin  # the module-scoped bare origin with main + feature (3 commits), as a fixture here
REPO = tp.REPO
URL = "https://github.com/ada/demo/pull/7"

FAKE_GH = """#!{python}
import json, os, shutil, sys
d = os.environ["FAKE_GH_DIR"]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["auth", "status"]:
    if os.path.exists(os.path.join(d, "logged-out")):
        sys.stderr.write("You are not logged into any GitHub hosts. To log in, run: gh auth login\\n")
        sys.exit(1)
    print("github.com: Logged in to github.com account ada")
    sys.exit(0)
if sys.argv[1:3] == ["pr", "create"]:
    shutil.copy(sys.argv[sys.argv.index("--body-file") + 1], os.path.join(d, "body.md"))
    print("{url}")
    sys.exit(0)
sys.exit(2)
"""

HOSTS = """\
[ssh]
config = "{ssh_config}"

[defaults]
connect_timeout = 3

[hosts.prbox]
ssh = "opstest"
path = "{dir}/prbox"
state_dir = "{dir}/state-prbox"
source = "push"
services = []
"""

PREFLIGHT = f"""
[preflight]
commits = 3
max_files = 3
same_head = true

[[preflight.tests]]
host = "prbox"
cwd = "proj"
cmd = "{tp.PYTEST}"
expect_passed = 18
timeout = 120
"""


@dataclass
class World:
    dir: Path
    laptop: Path
    inventory: Path
    gh_dir: Path  # the fake gh's records
    fakebin: Path


@pytest.fixture
def world(origin: tp.Origin, sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("OPS_JOURNAL", str(tmp_path / "journal.jsonl"))
    laptop = tp.clone(origin, tmp_path / "laptop")
    gh_dir, fakebin = tmp_path / "gh-records", tmp_path / "bin"
    gh_dir.mkdir()
    fakebin.mkdir()
    gh = fakebin / "gh"
    gh.write_text(FAKE_GH.format(python=sys.executable, url=URL))
    gh.chmod(0o755)
    inv_path = tmp_path / "hosts.toml"
    inv_path.write_text(HOSTS.format(ssh_config=sshd.ssh_config_path, dir=tmp_path) + PREFLIGHT)
    return World(tmp_path, laptop, inv_path, gh_dir, fakebin)


def deploy_to_prbox(w: World, ref: str) -> None:
    inv = inventory.load(w.inventory)
    [r] = deploy.deploy(inv, [inv.host("prbox")], DeployOptions(repo=str(w.laptop), ref=ref))
    assert r.outcome == "ok", (r.error, r.steps)


def run_pr(w: World, *args: str, gh: bool = True) -> subprocess.CompletedProcess[str]:
    path = os.environ["PATH"]
    env = {**os.environ, "OPS_INVENTORY": str(w.inventory), "FAKE_GH_DIR": str(w.gh_dir),
           "PATH": f"{w.fakebin}:{path}" if gh else path}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "pr", "--repo", str(w.laptop), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )


def gh_calls(w: World) -> list[list[str]]:
    f = w.gh_dir / "calls.jsonl"
    return [json.loads(ln) for ln in f.read_text().splitlines()] if f.exists() else []


def body_path(w: World) -> Path:
    return w.laptop / ".git" / "ops-pr-body.md"


EXPECTED_BODY = """\
## Summary

- app: add one.py (`d8a3482`)
- docs: usage in the README (`b7563fe`)
- app: add two.py (`276f86e`)

## Verification

- Base `origin/main` fetched from `origin` before the checks
- Branch `feature` at `276f86e`: 3 commits ahead of `origin/main`, 0 behind (merge base `2ecc29f`)
- Commits (3):
  - `d8a3482` app: add one.py
  - `b7563fe` docs: usage in the README
  - `276f86e` app: add two.py
- Diff stat vs the merge base: 3 files changed, 18 insertions(+), 0 deletions(-)
- Working tree: clean
- Checkouts on the hosts:
  - prbox: at `276f86e`, the branch HEAD, clean tree
- Tests:
  - prbox: `{pytest}` (in `proj`) — 18/18 passed

All 7 pre-flight checks passed.

## Rollback

- prbox: runs this branch (`276f86e`), deployed over `2ecc29f`. To go back to `2ecc29f`: \
`OPS_INVENTORY={inventory} inv rollback --host prbox`
"""


def test_a_green_preflight_opens_the_pr_with_the_exact_body_and_its_rollback_command_works(
    world: World, origin: tp.Origin
) -> None:
    deploy_to_prbox(world, origin.initial)  # what ran before the branch
    deploy_to_prbox(world, "HEAD")  # the branch, as deployed for its remote checks
    p = run_pr(world)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == URL
    body = body_path(world)
    assert gh_calls(world) == [
        ["auth", "status"],
        ["pr", "create", "--base", "main", "--head", "feature", "--title", "feature",
         "--body-file", str(body)],
    ]
    expected = EXPECTED_BODY.format(pytest=tp.PYTEST, inventory=world.inventory)
    assert (world.gh_dir / "body.md").read_text() == expected
    assert body.read_text() == expected  # kept, in the git directory (never the work tree)

    # the command in the body is exact: run as written, it takes prbox back to the previous commit
    cmd = expected.rsplit("`", 2)[-2]
    # as the user has it: `inv` of the installation running these tests on PATH (a venv's bin)
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    r = subprocess.run(["sh", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL, env=dict(os.environ, PATH=path))
    assert r.returncode == 0, r.stdout + r.stderr
    head = tp.git(world.dir / "prbox", "rev-parse", "--short=7", "HEAD")
    assert head == origin.initial


def test_draft_and_title_are_passed_to_gh(world: World, origin: tp.Origin) -> None:
    deploy_to_prbox(world, "HEAD")
    p = run_pr(world, "--draft", "--title", "TTS: two backends")
    assert p.returncode == 0, p.stdout + p.stderr
    create = gh_calls(world)[-1]
    assert create[create.index("--title") + 1] == "TTS: two backends" and create[-1] == "--draft"
    assert "pull request opened (draft):" in p.stdout
    assert "no earlier deploy is recorded there" in (world.gh_dir / "body.md").read_text()


def test_a_red_preflight_calls_no_gh_and_writes_no_body(world: World) -> None:
    deploy_to_prbox(world, "HEAD")
    (world.laptop / "notes.txt").write_text("forgot to commit this\n")
    p = run_pr(world)
    assert p.returncode == 1
    assert "no pull request opened: pre-flight failed" in p.stdout
    assert gh_calls(world) == [] and not body_path(world).exists()
    p = run_pr(world, "--json")
    data = json.loads(p.stdout)
    assert p.returncode == 1 and data["opened"] is False and data["body_file"] is None
    assert data["preflight"]["ok"] is False and data["exit_code"] == 1
    assert gh_calls(world) == [] and not body_path(world).exists()


def test_without_gh_the_body_is_written_to_paste(world: World) -> None:
    deploy_to_prbox(world, "HEAD")
    p = run_pr(world, gh=False)
    assert p.returncode == 1
    assert (
        f"`gh` is not installed (not on PATH): the PR was not opened; its body is in {body_path(world)}"
        in p.stdout
    )
    assert body_path(world).read_text().startswith("## Summary\n")


def test_an_unauthenticated_gh_is_named_and_the_body_is_written_to_paste(world: World) -> None:
    deploy_to_prbox(world, "HEAD")
    (world.gh_dir / "logged-out").write_text("")
    p = run_pr(world)
    assert p.returncode == 1
    assert "`gh` is not authenticated (You are not logged into any GitHub hosts." in p.stdout
    assert "gh auth login" in p.stdout
    assert gh_calls(world) == [["auth", "status"]] and body_path(world).exists()


def _no_remote_checks(w: World, extra: str = "") -> None:
    w.inventory.write_text(
        w.inventory.read_text().split("\n[preflight]")[0] + "\n[preflight]\n" + extra
    )


def test_an_unpushed_branch_is_not_opened(world: World, origin: tp.Origin) -> None:
    _no_remote_checks(world)
    tp.commit_file(world.laptop, "app/three.py", "THREE = 3\n", "app: add three.py")
    p = run_pr(world)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "origin has feature at 276f86e, the local HEAD is " in p.stdout
    assert "push the branch" in p.stdout
    assert ["pr", "create"] not in [c[:2] for c in gh_calls(world)]


def test_a_stacked_pr_on_its_parent_branch_with_a_template(
    world: World, origin: tp.Origin, tmp_path: Path
) -> None:
    """child is one commit on feature; the PR's base is origin/feature, the checks count from it."""
    bare = tp._origin_copy(origin, tmp_path)
    laptop = tmp_path / "stack"
    tp.git(tmp_path, "clone", "-q", "-b", "feature", str(bare), str(laptop))
    tp.git(laptop, "checkout", "-q", "-b", "child")
    template = "# {{title}}\n\nStacked on `{{base}}`.\n\n{{summary}}\n\n{{verification}}\n\n{{rollback}}"
    tp.commit_file(laptop, "docs/pr-template.md", template, "docs: a PR template")
    tp.git(laptop, "push", "-q", "origin", "child")
    world.laptop = laptop
    _no_remote_checks(world, 'commits = 1\nbody = "docs/pr-template.md"\nexpect_files = ["docs/**"]\n')
    p = run_pr(world, "--base", "origin/feature")
    assert p.returncode == 0, p.stdout + p.stderr
    create = gh_calls(world)[-1]
    assert create[:8] == [
        "pr", "create", "--base", "feature", "--head", "child", "--title", "docs: a PR template"
    ]
    body = (world.gh_dir / "body.md").read_text()
    head = tp.git(laptop, "rev-parse", "--short=7", "HEAD")
    assert body.startswith(
        "# docs: a PR template\n\nStacked on `feature`.\n\n## Summary\n\n"
        f"- docs: a PR template (`{head}`)\n\n## Verification\n\n"
        "- Base `origin/feature` fetched from `origin` before the checks\n"
        f"- Branch `child` at `{head}`: 1 commit ahead of `origin/feature`, 0 behind "
        "(merge base `276f86e`)\n"
    )
    assert "- Paths touched (1): all within `docs/**`, each at least once\n" in body
    assert body.endswith(
        "## Rollback\n\n- No host runs remote checks in this pre-flight: nothing deployed to roll back.\n"
    )


def test_pr_dry_run_shows_the_checks_and_the_gh_command_and_runs_nothing(world: World) -> None:
    p = run_pr(world, "--dry-run", "--base", "origin/main")
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.splitlines()[-1]
    assert last.startswith("then, only if every check passed: ")
    assert "pr create --base main --head feature" in last
    assert gh_calls(world) == [] and not body_path(world).exists()
