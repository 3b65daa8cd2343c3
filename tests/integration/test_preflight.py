"""`inv preflight` end to end: real git repositories (a bare origin, a box checkout, a laptop clone
on a feature branch with 3 commits), the real sshd for the remote checks (a tiny pytest project of
18 tests on the "box", a real service with a health URL started through the lifecycle), and the
real `inv` command for exit codes and the markdown compared exactly.

Every check is shown passing, then each failing for its own reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops import control, inventory, preflight
from ops.preflight import FAIL, PASS, SKIP, PreflightReport
from ops.session import connect
from tests.harness import SshServer, cmdline, free_port, kill_quietly, pid_alive, wait_until

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
HTTP_STATUS = REPO / "tests" / "fixtures" / "services" / "http_status.py"
PY = shlex.quote(sys.executable)  # over ssh, `python3` on PATH may lack pytest: use this one
PYTEST = f"{PY} -m pytest -q -p no:cacheprovider tests"

# Fixed identities and dates: commit ids are the same on every run (the markdown is compared exactly).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_AUTHOR_DATE": "2024-05-06T07:08:09+00:00",
    "GIT_COMMITTER_DATE": "2024-05-06T07:08:09+00:00",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
TEST_FILE = """\
import os

import pytest

FLAG = os.path.join(os.path.dirname(__file__), os.pardir, "FAIL_ONE")


@pytest.mark.parametrize("n", range(17))
def test_number(n):
    assert n * 2 == n + n


def test_flag():
    assert not os.path.exists(FLAG), "the flag file makes this one fail"
"""
FEATURE = [  # (path, content, subject): the branch's 3 commits
    ("app/one.py", "".join(f"ONE_{i} = {i}\n" for i in range(10)), "app: add one.py"),
    ("README.md", "# demo\n\nUsage: run it.\nMore: read it.\n", "docs: usage in the README"),
    ("app/two.py", "".join(f"TWO_{i} = {i}\n" for i in range(5)), "app: add two.py"),
]


SECRET = "tok-9f8e7d6c5b4a"  # web's env_file value: must never come back from a host verbatim


def git(cwd: Path, *args: str) -> str:
    p = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout.strip()


def commit_file(repo: Path, path: str, content: str, subject: str) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(content)
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", subject)
    return git(repo, "rev-parse", "--short=7", "HEAD")


@dataclass
class Origin:
    bare: Path
    initial: str  # short id of main's commit
    feature: list[str]  # short ids of the 3 feature commits, oldest first


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    root = tmp_path_factory.mktemp("git")
    bare = root / "origin.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = root / "seed"
    git(root, "init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("# demo\n")
    git(seed, "add", "README.md")
    initial = commit_file(seed, "proj/tests/test_many.py", TEST_FILE, "initial: 18 tests")
    git(seed, "remote", "add", "origin", str(bare))
    git(seed, "push", "-q", "origin", "main")
    git(seed, "checkout", "-q", "-b", "feature")
    feature = [commit_file(seed, *spec) for spec in FEATURE]
    git(seed, "push", "-q", "origin", "feature")
    return Origin(bare, initial, feature)


def clone(origin: Origin, dest: Path, branch: str = "feature") -> Path:
    git(dest.parent, "clone", "-q", "-b", branch, str(origin.bare), str(dest))
    return dest


@dataclass
class Box:
    """What the hosts share: ports and state dirs of the started services."""

    dir: Path
    port: int
    sick_port: int
    idle_port: int


HOSTS = """\
[ssh]
config = "{ssh_config}"

[defaults]
connect_timeout = 3

[hosts.box]
ssh = "opstest"
path = "{box_path}"
state_dir = "{dir}/state-box"
services = ["web"]
overrides.web.port = {port}

[hosts.sick]
ssh = "opstest-sick"
path = "{box_path}"
state_dir = "{dir}/state-sick"
services = ["web_sick"]
overrides.web_sick.port = {sick_port}

[hosts.idle]
ssh = "opstest-idle"
path = "{box_path}"
state_dir = "{dir}/state-idle"
services = ["web"]
overrides.web.port = {idle_port}

[hosts.dead]
ssh = "opsdead"
path = "/nonexistent"
services = ["web"]
overrides.web.port = {idle_port}

[services.web]
cmd = "{python} {http_status} --port ${{port}} --status 200"
env_file = "{dir}/web.env"
ready = {{ log = "listening" }}
health = {{ url = "http://127.0.0.1:${{port}}/health" }}

[services.web_sick]
cmd = "{python} {http_status} --port ${{port}} --status 500"
ready = {{ log = "listening", health = false }}
health = {{ url = "http://127.0.0.1:${{port}}/health" }}
"""


def write_inventory(path: Path, sshd: SshServer, box: Box, box_path: Path, preflight_toml: str = "") -> Path:
    text = HOSTS.format(
        ssh_config=sshd.ssh_config_path,
        box_path=box_path,
        dir=box.dir,
        port=box.port,
        sick_port=box.sick_port,
        idle_port=box.idle_port,
        python=sys.executable,
        http_status=HTTP_STATUS,
    )
    path.write_text(text + "\n" + preflight_toml)
    return path


def _kill_leftovers(ports: list[int]) -> None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = cmdline(int(entry))
            if str(HTTP_STATUS) in argv and any(str(p) in argv for p in ports):
                kill_quietly(int(entry), signal.SIGKILL)


@pytest.fixture(scope="module")
def box(sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """web (answers 200) running on host `box`, web_sick (answers 500) on host `sick`, both started
    over ssh through the lifecycle; `idle` declares web on another port and never starts it."""
    d = tmp_path_factory.mktemp("box")
    b = Box(d, free_port(), free_port(), free_port())
    (d / "web.env").write_text(f"WEB_TOKEN={SECRET}\n")
    inv = inventory.load(write_inventory(d / "hosts.toml", sshd, b, d))
    started = []
    try:
        for name in ("box", "sick"):
            with connect(inv, inv.host(name)) as session:
                started.append(name)
                result = control.start(session)
                assert result.ok, result.services
        yield b
    finally:
        for name in started:
            with connect(inv, inv.host(name)) as session:
                control.stop(session)
        _kill_leftovers([b.port, b.sick_port])


@dataclass
class Scene:
    laptop: Path
    box_path: Path
    inventory: Path
    origin: Origin


@pytest.fixture
def scene(origin: Origin, box: Box, sshd: SshServer, tmp_path: Path) -> Scene:
    laptop = clone(origin, tmp_path / "laptop")
    box_path = clone(origin, tmp_path / "boxcheckout")
    return Scene(laptop, box_path, tmp_path / "hosts.toml", origin)


DEFAULT_TEST = f'host = "box"\ncwd = "proj"\ncmd = "{PYTEST}"\nexpect_passed = 18\ntimeout = 60\n'


def preflight_toml(origin: Origin, test: str | None = DEFAULT_TEST, **over: str | None) -> str:
    """A [preflight] table that passes for the scene; ``over`` replaces keys (None drops one)."""
    keys: dict[str, str | None] = {
        "commits": "3",
        "expect_commits": json.dumps(origin.feature),
        "only_expected": "true",
        "max_files": "3",
        "max_insertions": "20",
        "max_deletions": "0",
        "same_head": "true",
        "health": '["box"]',
    }
    keys.update(over)
    table = "[preflight]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    return table + (f"\n[[preflight.tests]]\n{test}" if test else "")


def run_preflight(scene: Scene, sshd: SshServer, box: Box, toml: str, **flags) -> PreflightReport:
    inv = inventory.load(write_inventory(scene.inventory, sshd, box, scene.box_path, toml))
    keep_going = flags.pop("keep_going", False)
    s = preflight.settings(inv, repo=str(scene.laptop), **flags)
    return preflight.run(inv, s, keep_going=keep_going)


def statuses(rep: PreflightReport) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in rep.checks]


def check(rep: PreflightReport, name: str):
    return next(c for c in rep.checks if c.name == name)


ALL_NAMES = [
    "git: fetch",
    "git: base",
    "git: commits",
    "git: clean",
    "git: diff",
    "box: checkout",
    "box: health web",
    f"box: test {PYTEST}",
]


def run_inv(scene: Scene, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "preflight", "--repo", str(scene.laptop), *args],
        cwd=REPO,
        env={**os.environ, "OPS_INVENTORY": str(scene.inventory)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# --- every check passing ------------------------------------------------------------------------


def test_every_check_passes_with_its_facts(scene: Scene, sshd: SshServer, box: Box) -> None:
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin))
    assert statuses(rep) == [(n, PASS) for n in ALL_NAMES], [c.detail for c in rep.checks]
    assert rep.ok and rep.exit_code == 0
    base = check(rep, "git: base").facts
    assert (base["branch"], base["ahead"], base["behind"]) == ("feature", 3, 0)
    commits = check(rep, "git: commits").facts["commits"]
    assert [c["id"] for c in commits] == scene.origin.feature
    assert [c["subject"] for c in commits] == [s for _, _, s in FEATURE]
    diff = check(rep, "git: diff").facts
    assert (diff["files"], diff["insertions"], diff["deletions"]) == (3, 18, 0)
    tests = check(rep, f"box: test {PYTEST}")
    assert tests.detail == "18/18 passed"
    assert (tests.facts["passed"], tests.facts["exit_code"]) == (18, 0)
    health = check(rep, "box: health web")
    assert health.facts["state"] == "running" and health.facts["health"]["ok"] is True
    assert health.facts["last_line"].endswith('"GET /health HTTP/1.1" 200 -')


EXPECTED_MARKDOWN = """\
## Verification

- Base `origin/main` fetched from `origin` before the checks
- Branch `feature` at `{head}`: 3 commits ahead of `origin/main`, 0 behind (merge base `{initial}`)
- Commits (3):
  - `{c1}` app: add one.py
  - `{c2}` docs: usage in the README
  - `{c3}` app: add two.py
- Diff stat vs the merge base: 3 files changed, 18 insertions(+), 0 deletions(-)
- Working tree: clean
- Checkouts on the hosts:
  - box: at `{head}`, the branch HEAD, clean tree
- Tests:
  - box: `{pytest}` (in `proj`) — 18/18 passed
- Health:
  - box: web — healthy: http://127.0.0.1:{port}/health answered 200; last log line: \
`127.0.0.1 "GET /health HTTP/1.1" 200 -`

All 8 pre-flight checks passed.
"""


def test_inv_preflight_markdown_is_exact_and_exits_0(scene: Scene, sshd: SshServer, box: Box) -> None:
    write_inventory(scene.inventory, sshd, box, scene.box_path, preflight_toml(scene.origin))
    p = run_inv(scene, "--markdown")
    assert p.returncode == 0, p.stdout + p.stderr
    # The ids are fixed by the fixed author/committer dates: pin them, so a change in how the
    # repository is built shows up here too.
    assert scene.origin.feature == ["d8a3482", "b7563fe", "276f86e"]
    assert p.stdout == EXPECTED_MARKDOWN.format(
        head=scene.origin.feature[-1],
        initial=scene.origin.initial,
        c1=scene.origin.feature[0],
        c2=scene.origin.feature[1],
        c3=scene.origin.feature[2],
        pytest=PYTEST,
        port=box.port,
    )


# --- each check failing for its own reason ------------------------------------------------------


def test_a_missing_expected_commit_fails_and_stops(scene: Scene, sshd: SshServer, box: Box) -> None:
    ids = [*scene.origin.feature[:2], scene.origin.initial]  # the initial commit is in the base already
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, expect_commits=json.dumps(ids)))
    c = check(rep, "git: commits")
    assert c.status == FAIL
    assert c.detail == (
        f"expected commit {scene.origin.initial} is missing "
        "(exists, but is not between origin/main and HEAD); "
        f"unexpected commit: {scene.origin.feature[2]} 'app: add two.py'"
    )
    assert [s for _, s in statuses(rep)] == [PASS, PASS, FAIL, SKIP, SKIP, SKIP, SKIP, SKIP]
    assert rep.exit_code == 1


def test_one_commit_too_many_fails(scene: Scene, sshd: SshServer, box: Box) -> None:
    extra = commit_file(scene.laptop, "app/three.py", "THREE = 3\n", "app: sneak in three.py")
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin), keep_going=True)
    assert check(rep, "git: commits").detail == (
        "4 commits ahead of origin/main, expected exactly 3; "
        f"unexpected commit: {extra} 'app: sneak in three.py'"
    )
    # the same new commit also breaks the diff bound and the remote checkout's HEAD
    assert check(rep, "git: diff").status == FAIL
    assert check(rep, "box: checkout").status == FAIL
    assert rep.exit_code == 1


def test_a_dirty_tree_fails(scene: Scene, sshd: SshServer, box: Box) -> None:
    (scene.laptop / "notes.txt").write_text("todo\n")
    (scene.laptop / "README.md").write_text("# changed\n")
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin))
    c = check(rep, "git: clean")
    assert (c.status, c.detail) == (FAIL, "2 uncommitted changes: M README.md, ?? notes.txt")
    assert c.facts["dirty"] == ["M README.md", "?? notes.txt"]
    assert [s for _, s in statuses(rep)][4:] == [SKIP, SKIP, SKIP, SKIP]


def test_clean_false_does_not_check_the_tree(scene: Scene, sshd: SshServer, box: Box) -> None:
    (scene.laptop / "notes.txt").write_text("todo\n")
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, test=None, clean="false", health=None))
    assert "git: clean" not in [n for n, _ in statuses(rep)] and rep.ok


def test_a_diff_over_the_bound_fails(scene: Scene, sshd: SshServer, box: Box) -> None:
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, max_insertions="16", max_files="2"))
    c = check(rep, "git: diff")
    assert c.status == FAIL
    assert (
        c.detail
        == "3 files changed, 18 insertions(+), 0 deletions(-): 3 files > max 2; 18 insertions > max 16"
    )
    assert rep.exit_code == 1


def test_a_remote_run_with_17_of_18_passing_fails(scene: Scene, sshd: SshServer, box: Box) -> None:
    (scene.box_path / "proj" / "FAIL_ONE").write_text("")  # an untracked file: same_head would catch it
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, same_head="false"))
    c = check(rep, f"box: test {PYTEST}")
    assert c.status == FAIL
    assert c.detail == "17/18 passed, 1 failed; exit 1; expected 18 passed"
    assert (c.facts["passed"], c.facts["failed"], c.facts["exit_code"]) == (17, 1, 1)
    assert any("the flag file makes this one fail" in ln for ln in c.output)
    assert c.output[-1].startswith("1 failed, 17 passed in ")


def test_a_remote_run_that_passes_with_the_wrong_count_fails(scene: Scene, sshd: SshServer, box: Box) -> None:
    cmd = f"{PYTEST} -k 'not test_flag'"
    test = f'host = "box"\ncwd = "proj"\ncmd = "{cmd}"\nexpect_passed = 18\n'
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, test=test))
    c = check(rep, f"box: test {cmd}")
    assert c.status == FAIL
    assert c.facts["exit_code"] == 0  # the command itself succeeded
    assert c.detail == "17/17 passed, 1 deselected; expected 18 passed"


def test_a_regex_runner_reads_its_own_count(scene: Scene, sshd: SshServer, box: Box) -> None:
    test = (
        f'host = "box"\ncwd = "proj"\ncmd = "{PYTEST}"\n'
        'expect_regex = "^(\\\\d+) passed in"\nexpect_passed = 18\n'
    )
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, test=test, health=None))
    c = check(rep, f"box: test {PYTEST}")
    assert (c.status, c.facts["passed"]) == (PASS, 18), c.detail


def test_a_stopped_service_is_unhealthy(scene: Scene, sshd: SshServer, box: Box) -> None:
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, health='["idle"]', same_head="false"))
    c = check(rep, "idle: health web")
    assert c.status == FAIL
    assert c.detail.startswith("web is stopped")
    assert c.facts["state"] == "stopped"
    assert check(rep, f"box: test {PYTEST}").status == SKIP


def test_a_service_answering_500_is_unhealthy(scene: Scene, sshd: SshServer, box: Box) -> None:
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, health='["sick"]', same_head="false"))
    c = check(rep, "sick: health web_sick")
    assert c.status == FAIL
    assert c.detail.startswith(
        f"unhealthy: http://127.0.0.1:{box.sick_port}/health answered 500, expected 200; last log: "
    )
    assert c.facts["state"] == "running"


def test_a_checkout_on_another_commit_fails_same_head(scene: Scene, sshd: SshServer, box: Box) -> None:
    git(scene.box_path, "checkout", "-q", "HEAD~1")
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin))
    c = check(rep, "box: checkout")
    assert c.status == FAIL
    assert c.detail == (
        f"the checkout {scene.box_path} is at {scene.origin.feature[1]}, this branch is at "
        f"{scene.origin.feature[2]}: deploy the branch first"
    )


def test_an_unreachable_host_fails_alone_and_exits_3(scene: Scene, sshd: SshServer, box: Box) -> None:
    toml = preflight_toml(scene.origin, health='["dead", "box"]', same_head="false")
    rep = run_preflight(scene, sshd, box, toml, keep_going=True)
    assert statuses(rep)[5:] == [
        ("dead: health web", FAIL),
        ("box: health web", PASS),
        (f"box: test {PYTEST}", PASS),
    ]
    assert "dead" in check(rep, "dead: health web").detail
    assert rep.exit_code == 3


# --- the real command ---------------------------------------------------------------------------


def test_inv_preflight_fails_with_exit_1_and_keep_going_json(scene: Scene, sshd: SshServer, box: Box) -> None:
    (scene.box_path / "proj" / "FAIL_ONE").write_text("")
    (scene.laptop / "notes.txt").write_text("todo\n")
    toml = preflight_toml(scene.origin, same_head="false")
    write_inventory(scene.inventory, sshd, box, scene.box_path, toml)
    p = run_inv(scene)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"pre-flight of {scene.laptop} over origin/main"
    assert any(ln.startswith("git: clean") and "FAIL" in ln for ln in lines)
    assert lines[-1].startswith(
        "Pre-flight FAILED: 1 of 7 checks failed, 3 not run. First failure: git: clean"
    )

    p = run_inv(scene, "--keep-going", "--json")
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    assert [c["status"] for c in data["checks"]] == ["pass", "pass", "pass", "fail", "pass", "pass", "fail"]
    assert data["checks"][-1]["detail"] == "17/18 passed, 1 failed; exit 1; expected 18 passed"
    assert data["summary"] == {"pass": 5, "fail": 2, "skip": 0}


def test_inv_preflight_flags_override_and_restrict(scene: Scene, sshd: SshServer, box: Box) -> None:
    toml = preflight_toml(scene.origin, health='["idle", "box"]', same_head="false")
    write_inventory(scene.inventory, sshd, box, scene.box_path, toml)
    p = run_inv(scene, "--host", "box", "--commits", "3", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    names = [c["name"] for c in json.loads(p.stdout)["checks"]]
    assert "idle: health web" not in names and "box: health web" in names
    p = run_inv(scene, "--host", "box", "--expect", scene.origin.feature[0], "--base", "origin/main")
    assert p.returncode == 1
    assert "unexpected commits: " in p.stdout
    p = run_inv(scene, "--commits", "many")
    assert p.returncode == 2 and "--commits must be a number" in p.stderr
    p = run_inv(scene, "--base", "origin/nope", "--host", "box")
    assert p.returncode == 1 and "origin has no branch nope (the base origin/nope)" in p.stdout
    p = run_inv(scene, "--base", "origin/nope", "--host", "box", "--no-fetch")
    assert p.returncode == 1 and "base 'origin/nope' names no commit" in p.stdout


def test_inv_preflight_refuses_a_directory_that_is_not_a_checkout(
    scene: Scene, sshd: SshServer, box: Box, tmp_path: Path
) -> None:
    write_inventory(scene.inventory, sshd, box, scene.box_path, preflight_toml(scene.origin))
    p = subprocess.run(
        [sys.executable, "-m", "invoke", "preflight", "--repo", str(tmp_path / "nowhere")],
        cwd=REPO,
        env={**os.environ, "OPS_INVENTORY": str(scene.inventory)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "not a git checkout" in p.stderr and "Traceback" not in p.stderr


def test_inv_preflight_dry_run_lists_the_checks_and_touches_no_host(
    scene: Scene, sshd: SshServer, box: Box
) -> None:
    toml = preflight_toml(scene.origin, health='["dead", "box"]')
    write_inventory(scene.inventory, sshd, box, scene.box_path, toml)
    (scene.laptop / "notes.txt").write_text("dirty, but nothing runs\n")
    p = run_inv(scene, "--dry-run", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    plan = json.loads(p.stdout)["plan"]
    assert [c["name"] for c in plan] == [
        *ALL_NAMES[:5],
        "dead: checkout",
        *ALL_NAMES[5:6],
        "dead: health web",
        *ALL_NAMES[6:],
    ]
    assert plan[-1]["what"] == f"in proj: `{PYTEST}`: exit 0 and exactly 18 passed (timeout 60s)"


# --- issue 16: checks that cannot be fooled --------------------------------------------------------


def test_an_edited_file_on_the_host_fails_same_head_naming_the_files(
    scene: Scene, sshd: SshServer, box: Box
) -> None:
    """The host is at the right commit, but its tree is not what was committed: the remote tests
    would run uncommitted code. Fails naming the files; the healthy twin (same commit, clean) passes."""
    test_file = scene.box_path / "proj" / "tests" / "test_many.py"
    test_file.write_text(test_file.read_text() + "\n# edited on the box\n")
    (scene.box_path / "scratch.txt").write_text("left on the box\n")
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin))
    c = check(rep, "box: checkout")
    assert c.status == FAIL
    assert c.detail.startswith(
        f"the checkout {scene.box_path} has 2 uncommitted changes: M proj/tests/test_many.py, "
        "?? scratch.txt: the remote checks would run uncommitted code"
    )
    assert c.facts["remote_head"] == c.facts["local_head"]  # the commit alone would have passed
    assert check(rep, f"box: test {PYTEST}").status == SKIP
    git(scene.box_path, "checkout", "--", "proj/tests/test_many.py")
    (scene.box_path / "scratch.txt").unlink()
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin))
    assert check(rep, "box: checkout").status == PASS and rep.ok, [x.detail for x in rep.checks]


def test_a_secret_printed_by_a_failing_remote_test_is_redacted_in_table_and_json(
    scene: Scene, sshd: SshServer, box: Box
) -> None:
    env = box.dir / "web.env"
    cmd = f"cat {env}; echo visible-marker; exit 1"
    test = f'host = "box"\nname = "leaky"\ncmd = "{cmd}"\nrunner = "regex"\n'
    write_inventory(scene.inventory, sshd, box, scene.box_path, preflight_toml(scene.origin, test=test))
    table = run_inv(scene)
    as_json = run_inv(scene, "--json")
    assert table.returncode == 1 and as_json.returncode == 1, table.stdout + table.stderr
    for p in (table, as_json):
        assert SECRET not in p.stdout + p.stderr
        assert "WEB_TOKEN=***" in p.stdout
        assert "visible-marker" in p.stdout  # the twin: what is not a secret is shown as printed
    data = json.loads(as_json.stdout)
    leaky = next(c for c in data["checks"] if c["name"] == "box: test leaky")
    assert leaky["output"] == ["WEB_TOKEN=***", "visible-marker"]
    saved = Path(leaky["facts"]["saved"])  # the kept tail, on the host (this machine, over ssh)
    assert saved.parent == box.dir / "state-box" / "preflight"
    assert saved.read_text() == "WEB_TOKEN=***\nvisible-marker\n"
    assert "a longer tail is kept on box: " + str(saved) in table.stdout


def _origin_copy(origin: Origin, tmp_path: Path) -> Path:
    bare = tmp_path / "origin-copy.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin.bare), str(bare))
    return bare


def test_a_stale_base_is_fetched_first_and_no_fetch_shows_its_age(
    scene: Scene, sshd: SshServer, box: Box, tmp_path: Path
) -> None:
    """Someone merged into main after the laptop's last fetch: the branch is 1 behind. --no-fetch
    compares with the stale local ref (and says how old it is); the default fetches and sees it."""
    bare = _origin_copy(scene.origin, tmp_path)
    laptop = tmp_path / "laptop2"
    git(tmp_path, "clone", "-q", "-b", "feature", str(bare), str(laptop))
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(other))
    old_main = git(other, "rev-parse", "--short=7", "HEAD")
    new_main = commit_file(other, "CHANGES.md", "merged meanwhile\n", "main: merged meanwhile")
    git(other, "push", "-q", "origin", "main")
    stale = Scene(laptop, scene.box_path, scene.inventory, scene.origin)
    toml = preflight_toml(scene.origin, test=None, health=None, same_head="false")

    rep = run_preflight(stale, sshd, box, toml, fetch=False)
    c = check(rep, "git: fetch")
    assert c.status == PASS and c.facts["fetched"] is False
    # the clone's reflog entry carries the fixed GIT_COMMITTER_DATE of these tests (2024-05-06)
    assert c.facts["updated_at"] == 1714979289
    assert re.fullmatch(
        rf"not fetched \(--no-fetch\): origin/main at {old_main}, last fetched \d+d\d\dh ago", c.detail
    ), c.detail
    assert check(rep, "git: base").facts["behind"] == 0  # stale: the merge is not seen

    rep = run_preflight(stale, sshd, box, toml)
    assert check(rep, "git: fetch").detail == (
        f"fetched main from origin: origin/main at {new_main} (was {old_main})"
    )
    assert check(rep, "git: base").facts["behind"] == 1


def test_an_unreachable_base_remote_fails_the_fetch_and_no_fetch_gets_past_it(
    scene: Scene, sshd: SshServer, box: Box
) -> None:
    git(scene.laptop, "remote", "set-url", "origin", str(scene.laptop.parent / "gone.git"))
    toml = preflight_toml(scene.origin, test=None, health=None, same_head="false")
    rep = run_preflight(scene, sshd, box, toml)
    c = check(rep, "git: fetch")
    assert c.status == FAIL and c.detail.startswith("cannot fetch main from origin: ")
    assert "--no-fetch" in c.facts["advice"] and rep.exit_code == 1
    rep = run_preflight(scene, sshd, box, toml, fetch=False)
    assert rep.ok, [x.detail for x in rep.checks]


def test_diff_minimums_and_expect_files_on_the_real_branch(scene: Scene, sshd: SshServer, box: Box) -> None:
    base = {"test": None, "health": None, "same_head": "false", "max_files": None}
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, **base, min_files="4"))
    assert check(rep, "git: diff").detail == (
        "3 files changed, 18 insertions(+), 0 deletions(-): 3 files < min 4"
    )
    toml = preflight_toml(scene.origin, **base, min_files="3", min_insertions="18")
    rep = run_preflight(scene, sshd, box, toml)
    assert check(rep, "git: diff").status == PASS

    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, **base, expect_files='["app/*.py"]'))
    c = check(rep, "git: files")
    assert (c.status, c.detail) == (FAIL, "1 unexpected path: README.md")
    globs = '["app/*.py", "README.md", "docs/**"]'
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, **base, expect_files=globs))
    assert check(rep, "git: files").detail == "nothing touched matches docs/**"
    globs = '["app/*.py", "README.md"]'
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, **base, expect_files=globs))
    c = check(rep, "git: files")
    assert (c.status, c.detail) == (PASS, "3 paths touched, all within app/*.py, README.md")
    assert c.facts["files"] == ["README.md", "app/one.py", "app/two.py"]


def _rendezvous(me: str, other: str, d: Path, code: int) -> str:
    """A test command that says it started, then waits (bounded by its own timeout) for the other."""
    return f"touch {d}/{me}.started; while [ ! -e {d}/{other}.started ]; do sleep 0.05; done; exit {code}"


def test_remote_checks_run_on_all_hosts_at_once(
    scene: Scene, sshd: SshServer, box: Box, tmp_path: Path
) -> None:
    """Each host's test waits for the other's to have started: they pass only if both run at once.
    One host after the other (workers=1, the old behaviour) the first waits in vain and times out."""
    tests = "".join(
        f'\n[[preflight.tests]]\nhost = "{h}"\nname = "meet"\ncmd = "{_rendezvous(h, o, tmp_path, 0)}"\n'
        f'runner = "regex"\ntimeout = {t}\n'
        for h, o, t in (("box", "idle", 60), ("idle", "box", 60))
    )
    toml = preflight_toml(scene.origin, test=None, health=None, same_head="false") + tests
    rep = run_preflight(scene, sshd, box, toml)
    assert statuses(rep)[-2:] == [("box: test meet", PASS), ("idle: test meet", PASS)], [
        c.detail for c in rep.checks
    ]

    for f in tmp_path.glob("*.started"):
        f.unlink()
    toml = toml.replace("timeout = 60", "timeout = 3")
    inv = inventory.load(write_inventory(scene.inventory, sshd, box, scene.box_path, toml))
    s = preflight.settings(inv, repo=str(scene.laptop))
    rep = preflight.Runner(inv, s, workers=1).run(preflight.plan(s, inv))
    assert check(rep, "box: test meet").detail == "timed out after 3s (killed)"


def test_the_first_failure_in_declaration_order_is_reported_though_another_host_failed_sooner(
    scene: Scene, sshd: SshServer, box: Box, tmp_path: Path
) -> None:
    """box's test (declared first) fails only after idle's has started and failed at once."""
    slow = _rendezvous("box", "idle", tmp_path, 1)
    fast = f"touch {tmp_path}/idle.started; exit 2"
    tests = (
        f'\n[[preflight.tests]]\nhost = "box"\nname = "slow"\ncmd = "{slow}"\nrunner = "regex"\n'
        "timeout = 60\n"
        f'\n[[preflight.tests]]\nhost = "idle"\nname = "fast"\ncmd = "{fast}"\nrunner = "regex"\n'
    )
    toml = preflight_toml(scene.origin, test=None, health=None, same_head="false") + tests
    rep = run_preflight(scene, sshd, box, toml)
    assert statuses(rep)[-2:] == [("box: test slow", FAIL), ("idle: test fast", SKIP)]
    assert check(rep, "box: test slow").detail == "exit 1"
    assert check(rep, "idle: test fast").detail.startswith("not counted: stopped at 'box: test slow'")
    assert rep.exit_code == 1


def test_a_background_child_holding_stdout_does_not_turn_a_pass_into_a_timeout(
    scene: Scene, sshd: SshServer, box: Box, tmp_path: Path
) -> None:
    pidfile = tmp_path / "holder.pid"
    cmd = f"sleep 300 & echo $! > {pidfile}; {PYTEST}"
    test = f'host = "box"\ncwd = "proj"\nname = "bg"\ncmd = "{cmd}"\nexpect_passed = 18\ntimeout = 60\n'
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, test=test, health=None))
    c = check(rep, "box: test bg")
    assert c.status == PASS, c.detail
    assert c.detail == (
        "18/18 passed; a background process of the run still held its output after it exited: "
        "its group was killed"
    )
    assert c.facts["lingering"] is True and c.duration < 50
    holder = int(pidfile.read_text())
    wait_until(lambda: not pid_alive(holder), timeout=10, message="the leftover sleep is gone")
    # the twin: the command ITSELF still running at its timeout is a timeout
    test = f'host = "box"\ncwd = "proj"\nname = "hang"\ncmd = "{PYTEST}; sleep 300"\ntimeout = 3\n'
    rep = run_preflight(scene, sshd, box, preflight_toml(scene.origin, test=test, health=None))
    assert check(rep, "box: test hang").detail == "timed out after 3s (killed)"


def test_markdown_is_deterministic_and_a_red_run_is_red_from_its_first_line(
    scene: Scene, sshd: SshServer, box: Box
) -> None:
    write_inventory(scene.inventory, sshd, box, scene.box_path, preflight_toml(scene.origin))
    first, second = run_inv(scene, "--markdown"), run_inv(scene, "--markdown")
    assert first.returncode == second.returncode == 0, first.stdout + first.stderr
    assert first.stdout == second.stdout
    (scene.laptop / "notes.txt").write_text("todo\n")
    red = run_inv(scene, "--markdown", "--keep-going")
    assert red.returncode == 1
    lines = red.stdout.splitlines()
    assert lines[2] == "**Pre-flight FAILED: 1 of 8 checks failed: not ready for review.**"
    assert "- Working tree: **FAILED**: 1 uncommitted change: ?? notes.txt" in lines
    assert lines[-1].startswith("**Pre-flight FAILED") and "passed." not in red.stdout
