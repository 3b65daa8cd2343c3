"""preflight without SSH: the [preflight] schema, flags, the plan, verdicts, the runner's stop/skip
rules (fake git, fake hosts) and the rendering (markdown compared exactly)."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops import inventory, preflight, report
from ops.errors import InventoryError, Unreachable, UsageError
from ops.gitinfo import Commit, DiffStat, GitError
from ops.inventory import Preflight, PreflightTest
from ops.preflight import FAIL, PASS, SKIP, CheckResult, PreflightReport, Settings

HOSTS = """
[hosts.panda]
ssh = "panda"
path = "~/her-os"
services = ["phone", "tts"]

[hosts.pi]
ssh = "pi"
path = "/srv/app"
services = ["tts"]

[hosts.bare]
ssh = "bare"
path = "/srv/bare"

[groups]
gpu = ["panda"]

[services.phone]
cmd = "python3 phone.py"

[services.tts]
cmd = "python3 tts.py"
"""


def load(tmp_path: Path, text: str) -> inventory.Inventory:
    p = tmp_path / "hosts.toml"
    p.write_text(HOSTS + text)
    return inventory.load(p)


def fails(tmp_path: Path, text: str) -> str:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, text)
    return info.value.message


# --- [preflight] in hosts.toml ------------------------------------------------------------------


def test_no_preflight_table_gives_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "").preflight == Preflight()
    assert Preflight().base == "origin/main" and Preflight().clean is True


def test_the_full_preflight_table_parses(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
[preflight]
base = "upstream/main"
repo = "../her-os"
commits = 2
expect_commits = ["a1b2c3d", "9988776"]
only_expected = true
clean = false
max_files = 15
max_insertions = 1500
max_deletions = 500
same_head = true
health = ["gpu", "pi"]

[[preflight.tests]]
host = "panda"
cwd = "services/tts"
cmd = ".venv/bin/python -m pytest tests/test_tts_backends.py -q"
expect_passed = 40
timeout = 120

[[preflight.tests]]
host = "pi"
name = "unittest"
cmd = "python3 -m unittest"
expect_regex = "OK \\\\((\\\\d+) tests?\\\\)"
expect_passed = 12
""",
    )
    assert inv.preflight == Preflight(
        base="upstream/main",
        repo=str(tmp_path.parent / "her-os"),
        commits=2,
        expect_commits=("a1b2c3d", "9988776"),
        only_expected=True,
        clean=False,
        max_files=15,
        max_insertions=1500,
        max_deletions=500,
        same_head=True,
        health=("panda", "pi"),
        tests=(
            PreflightTest(
                host="panda",
                cmd=".venv/bin/python -m pytest tests/test_tts_backends.py -q",
                cwd="services/tts",
                expect_passed=40,
                timeout=120.0,
            ),
            PreflightTest(
                host="pi",
                cmd="python3 -m unittest",
                name="unittest",
                runner="regex",
                expect_passed=12,
                expect_regex=r"OK \((\d+) tests?\)",
            ),
        ),
    )


def test_the_readme_example_is_a_valid_preflight_table(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Preflight") :]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    pf = load(tmp_path, example).preflight
    assert pf.tests[0].expect_passed == 40 and pf.tests[1].runner == "regex"
    assert pf.health == ("panda",) and pf.same_head is True


def test_health_all_means_every_host_with_services(tmp_path: Path) -> None:
    text = '[preflight]\nhealth = ["panda", "all"]\n'
    # "all" includes a host without services, which cannot be health-checked
    assert "preflight.health" in fails(tmp_path, text) and "runs no services" in fails(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ('[preflight]\nbsae = "x"', "preflight.bsae", "unknown key 'bsae' (did you mean 'base'?)"),
        ('[preflight]\ncommits = "6"', "preflight.commits", "must be an integer"),
        ("[preflight]\ncommits = -1", "preflight.commits", "must be 0 or more"),
        ("[preflight]\nmax_files = -2", "preflight.max_files", "must be 0 or more"),
        ('[preflight]\nbase = "  "', "preflight.base", "must not be empty"),
        ('[preflight]\nclean = "yes"', "preflight.clean", "must be true or false"),
        ('[preflight]\nexpect_commits = ["main"]', "preflight.expect_commits", "'main' is not a commit id"),
        ('[preflight]\nexpect_commits = ["abcd", "ABCD"]', "preflight.expect_commits", "abcd more than once"),
        (
            '[preflight]\ncommits = 3\nonly_expected = true\nexpect_commits = ["abcd"]',
            "preflight.commits",
            "only_expected allows exactly the 1 expect_commits",
        ),
        ('[preflight]\nhealth = ["nope"]', "preflight.health", "'nope', which is not a host or group"),
        ('[preflight]\nhealth = ["bare"]', "preflight.health", "'bare', which runs no services"),
        ('[preflight]\ntests = "pytest"', "preflight.tests", "must be a list of tables"),
        ('[[preflight.tests]]\nhost = "panda"', "preflight.tests[0]", "missing key 'cmd'"),
        ('[[preflight.tests]]\ncmd = "true"', "preflight.tests[0]", "missing key 'host'"),
        (
            '[[preflight.tests]]\nhost = "nope"\ncmd = "true"',
            "preflight.tests[0]",
            "'nope', which is not defined",
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "true"\ncmdd = 1',
            "preflight.tests[0]",
            "unknown key 'cmdd'",
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "true"\nrunner = "jest"',
            "preflight.tests[0]",
            '\'runner\' must be "pytest" or "regex"',
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "t"\nrunner = "pytest"\nexpect_regex = "OK"',
            "preflight.tests[0]",
            "'expect_regex' is for runner = \"regex\"",
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "t"\nexpect_regex = "OK"\nexpect_passed = 3',
            "preflight.tests[0]",
            "needs a capture group",
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "t"\nrunner = "regex"\nexpect_passed = 3',
            "preflight.tests[0]",
            "needs 'expect_regex'",
        ),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "t"\nexpect_regex = "OK ("',
            "preflight.tests[0]",
            "not a valid",
        ),
        ('[[preflight.tests]]\nhost = "pi"\ncmd = "t"\ntimeout = 0', "preflight.tests[0]", "more than 0"),
        (
            '[[preflight.tests]]\nhost = "pi"\ncmd = "t"\nexpect_passed = -1',
            "preflight.tests[0]",
            "0 or more",
        ),
    ],
)
def test_bad_preflight_tables_name_the_key(tmp_path: Path, text: str, where: str, words: str) -> None:
    message = fails(tmp_path, text)
    assert f"[{where}]" in message
    assert words in message
    assert str(tmp_path / "hosts.toml") in message


# --- settings: flags over the inventory ---------------------------------------------------------

PF = """
[preflight]
commits = 2
expect_commits = ["a1b2c3d", "9988776"]
health = ["panda", "pi"]

[[preflight.tests]]
host = "panda"
cmd = "pytest -q"
expect_passed = 40

[[preflight.tests]]
host = "pi"
cmd = "pytest -q"
"""


def test_settings_default_to_the_inventory(tmp_path: Path) -> None:
    inv = load(tmp_path, PF)
    s = preflight.settings(inv, cwd="/src")
    assert s.repo == "/src" and s.base == "origin/main"
    assert s.commits == 2 and s.expect == ("a1b2c3d", "9988776")
    assert s.health == ("panda", "pi") and [t.host for t in s.tests] == ["panda", "pi"]


def test_a_commit_flag_replaces_the_whole_declared_expectation(tmp_path: Path) -> None:
    inv = load(tmp_path, PF)
    s = preflight.settings(inv, commits="3")
    assert (s.commits, s.expect) == (3, ())
    s = preflight.settings(inv, expect="abcd, 1234 ,")
    assert (s.commits, s.expect) == (None, ("abcd", "1234"))
    s = preflight.settings(inv, base="upstream/dev", repo="/other")
    assert (s.base, s.repo) == ("upstream/dev", "/other")


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"commits": "six"}, "--commits must be a number"),
        ({"commits": "-1"}, "--commits must be 0 or more"),
        ({"expect": "a1b2c3d,main"}, "--expect: 'main' is not a commit id"),
        ({"base": " "}, "--base must not be empty"),
        ({"host": "nope"}, "no host or group named 'nope'"),
        ({"host": "bare"}, "--host bare: no pre-flight check runs there"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, kw: dict, words: str) -> None:
    inv = load(tmp_path, PF)
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        preflight.settings(inv, **kw)


def test_host_flag_restricts_the_remote_checks(tmp_path: Path) -> None:
    inv = load(tmp_path, PF)
    s = preflight.settings(inv, host="pi")
    assert s.health == ("pi",) and [t.host for t in s.tests] == ["pi"]


# --- the plan -----------------------------------------------------------------------------------


def test_plan_is_git_then_checkouts_then_health_then_tests(tmp_path: Path) -> None:
    inv = load(tmp_path, PF)
    s = Settings(**{**vars(preflight.settings(inv)), "same_head": True})
    assert [(c.name, c.kind, c.host, c.service) for c in preflight.plan(s, inv)] == [
        ("git: fetch", "git.fetch", None, None),
        ("git: base", "git.base", None, None),
        ("git: commits", "git.commits", None, None),
        ("git: clean", "git.clean", None, None),
        ("git: diff", "git.diff", None, None),
        ("panda: checkout", "head", "panda", None),
        ("pi: checkout", "head", "pi", None),
        ("panda: health phone", "health", "panda", "phone"),
        ("panda: health tts", "health", "panda", "tts"),
        ("pi: health tts", "health", "pi", "tts"),
        ("panda: test pytest -q", "tests", "panda", None),
        ("pi: test pytest -q", "tests", "pi", None),
    ]


def test_plan_without_clean_or_remote_checks(tmp_path: Path) -> None:
    inv = load(tmp_path, "[preflight]\nclean = false\n")
    names = [c.name for c in preflight.plan(preflight.settings(inv), inv)]
    assert names == ["git: fetch", "git: base", "git: commits", "git: diff"]


# --- verdicts -----------------------------------------------------------------------------------


def pytest_test(expect: int | None = 18) -> PreflightTest:
    return PreflightTest(host="box", cmd="python -m pytest -q", expect_passed=expect)


def run(code: int, stdout: str, stderr: str = "", timed_out: bool = False) -> dict:
    return {"exit_code": code, "stdout": stdout, "stderr": stderr, "timed_out": timed_out, "duration": 1.0}


def test_all_expected_tests_passing_passes() -> None:
    out = preflight.judge_test(pytest_test(), run(0, "......\n18 passed in 0.30s\n"))
    assert out.ok and out.detail == "18/18 passed"
    assert out.facts["passed"] == 18 and out.facts["result"] == "18/18 passed"


def test_one_failure_fails_with_its_count_and_output_tail() -> None:
    out = preflight.judge_test(pytest_test(), run(1, "..F..\nFAILED t.py::x\n17 passed, 1 failed in 0.3s\n"))
    assert not out.ok
    assert out.detail == "17/18 passed, 1 failed; exit 1; expected 18 passed"
    assert out.output[-1] == "17 passed, 1 failed in 0.3s"


def test_a_wrong_count_fails_even_with_exit_0() -> None:
    out = preflight.judge_test(pytest_test(), run(0, "17 passed, 1 deselected in 0.3s\n"))
    assert not out.ok
    assert out.detail == "17/17 passed, 1 deselected; expected 18 passed"


def test_without_an_expected_count_exit_0_and_no_failures_pass() -> None:
    assert preflight.judge_test(pytest_test(None), run(0, "5 passed, 2 skipped in 0.1s\n")).detail == (
        "5/5 passed, 2 skipped"
    )
    out = preflight.judge_test(pytest_test(None), run(3, "1 error in 0.1s\n"))
    assert not out.ok and out.detail == "0/1 passed, 1 error; exit 3"


def test_no_summary_line_fails_when_a_count_is_expected() -> None:
    out = preflight.judge_test(pytest_test(), run(0, "...........\n"))
    assert not out.ok and "no pytest summary line" in out.detail and "-qq" in out.detail


def test_a_timed_out_run_fails() -> None:
    out = preflight.judge_test(pytest_test(), run(-9, "....", timed_out=True))
    assert not out.ok and out.detail == "timed out after 600s (killed)"


def test_a_missing_command_fails_with_its_exit_code() -> None:
    out = preflight.judge_test(pytest_test(), run(127, "", "sh: 1: .venv/bin/python: not found\n"))
    assert not out.ok and out.detail == "exit 127, no pytest summary line in the output"
    assert out.output == ["--- stderr ---", "sh: 1: .venv/bin/python: not found"]


def regex_test(pattern: str | None, expect: int | None) -> PreflightTest:
    return PreflightTest(
        host="box", cmd="make test", runner="regex", expect_regex=pattern, expect_passed=expect
    )


def test_regex_runner_checks_exit_code_and_count() -> None:
    ok = preflight.judge_test(regex_test(r"OK \((\d+) tests\)", 12), run(0, "Ran 12 tests\nOK (12 tests)\n"))
    assert ok.ok and ok.detail == "12/12 passed (OK (12 tests))"
    wrong = preflight.judge_test(regex_test(r"OK \((\d+) tests\)", 12), run(0, "OK (11 tests)\n"))
    assert not wrong.ok and wrong.detail == "'OK (11 tests)': 11 passed; expected 12"
    absent = preflight.judge_test(regex_test(r"^OK", None), run(0, "FAILED\n"))
    assert not absent.ok and absent.detail == "exit 0, but /^OK/ is not in the output"
    red = preflight.judge_test(regex_test(None, None), run(2, "boom\n"))
    assert not red.ok and red.detail == "exit 2"
    assert preflight.judge_test(regex_test(None, None), run(0, "")).detail == "exit 0"


def test_bounds_name_each_excess() -> None:
    s = Settings(repo=".", base="b", max_files=15, max_insertions=1500, max_deletions=500)
    assert preflight.judge_bounds(DiffStat(15, 1500, 500), s) == []
    assert preflight.judge_bounds(DiffStat(16, 1501, 0), s) == [
        "16 files > max 15",
        "1501 insertions > max 1500",
    ]
    assert preflight.judge_bounds(DiffStat(999, 999, 999), Settings(repo=".", base="b")) == []


# --- the runner (fake git, fake hosts) ----------------------------------------------------------

HEAD = "c" * 40
BASE = "b" * 40
C1 = Commit("a1b2c3d" + "1" * 33, "a1b2c3d", "first")
C2 = Commit("e4f5a6b" + "2" * 33, "e4f5a6b", "second")
STAT = DiffStat(2, 30, 4)


class FakeGit:
    def __init__(self, commits=(C1, C2), dirty=(), stat=STAT, base_ok=True):
        self.commits_ = list(commits)
        self.dirty, self.stat, self.base_ok = list(dirty), stat, base_ok

    def toplevel(self):
        return "/src/app"

    def resolve(self, rev):
        return HEAD if rev == "HEAD" else (BASE if self.base_ok else None)

    def merge_base(self, a, b):
        return BASE

    def ahead_behind(self, a, b):
        return len(self.commits_), 1

    def branch(self):
        return "feature"

    def commits(self, a, b):
        return self.commits_

    def status(self):
        return self.dirty

    def shortstat(self, a, b):
        return self.stat

    def exists(self, rev):
        return rev == "0dd0dd0"

    fetched: list = []
    fetch_error: str | None = None
    paths: list = ["app/one.py"]

    def remotes(self):
        return ["origin"]

    def fetch(self, remote, branch, timeout):
        if self.fetch_error:
            raise GitError(self.fetch_error)
        self.fetched = [*self.fetched, (remote, branch)]

    def last_sync(self, remote, branch):
        return 1_000_000 if (remote, branch) == ("origin", "main") else None

    def changed_files(self, a, b):
        return self.paths


def fake_connect(unreachable: set[str]):
    @contextmanager
    def connect(inv, host):
        if host.name in unreachable:
            raise Unreachable(host.name, "connection refused")
        raise AssertionError("this test reaches no host")
        yield

    return connect


def runner(tmp_path: Path, text: str, git: FakeGit, unreachable=frozenset(), with_fetch=False, **flags):
    """A Runner on fakes and its plan (without the `git: fetch` check unless asked: most tests here
    are about the checks after it)."""
    inv = load(tmp_path, text)
    s = preflight.settings(inv, **flags)
    r = preflight.Runner(inv, s, git=git, connect_fn=fake_connect(set(unreachable)), clock=lambda: 1_003_725)
    return r, [c for c in preflight.plan(s, inv) if with_fetch or c.kind != "git.fetch"]


def test_git_checks_pass_with_their_facts(tmp_path: Path) -> None:
    r, checks = runner(tmp_path, "[preflight]\ncommits = 2\nmax_files = 5\n", FakeGit())
    rep = r.run(checks)
    assert rep.ok and rep.exit_code == 0
    assert [(c.name, c.status, c.detail) for c in rep.checks] == [
        ("git: base", PASS, "branch feature at ccccccc: 2 ahead, 1 behind origin/main (merge base bbbbbbb)"),
        ("git: commits", PASS, "2 commits ahead of origin/main, as expected"),
        ("git: clean", PASS, "working tree clean"),
        ("git: diff", PASS, "2 files changed, 30 insertions(+), 4 deletions(-)"),
    ]


def test_the_first_failure_stops_the_rest_unless_keep_going(tmp_path: Path) -> None:
    text = "[preflight]\ncommits = 3\n"
    r, checks = runner(tmp_path, text, FakeGit(dirty=["?? new.py"]))
    rep = r.run(checks)
    assert [c.status for c in rep.checks] == [PASS, FAIL, SKIP, SKIP]
    assert rep.checks[1].detail == "2 commits ahead of origin/main, expected exactly 3"
    assert rep.checks[2].detail == "not run: stopped at 'git: commits' (--keep-going runs every check)"
    assert rep.exit_code == 1
    r, checks = runner(tmp_path, text, FakeGit(dirty=["?? new.py"]))
    rep = r.run(checks, keep_going=True)
    assert [c.status for c in rep.checks] == [PASS, FAIL, FAIL, PASS]
    assert rep.checks[2].detail == "1 uncommitted change: ?? new.py"


def test_expected_ids_missing_unexpected_and_ambiguous(tmp_path: Path) -> None:
    text = '[preflight]\nexpect_commits = ["a1b2c3d", "0dd0dd0", "deadbeef"]\nonly_expected = true\n'
    r, checks = runner(tmp_path, text, FakeGit())
    rep = r.run(checks)
    assert rep.checks[1].status == FAIL
    assert rep.checks[1].detail == (
        "expected commit 0dd0dd0 is missing (exists, but is not between origin/main and HEAD); "
        "expected commit deadbeef is missing (unknown to this repository); "
        "unexpected commit: e4f5a6b 'second'"
    )
    assert rep.checks[1].facts["missing"] == ["0dd0dd0", "deadbeef"]
    r, checks = runner(
        tmp_path, '[preflight]\nexpect_commits = ["A1B2C3D", "e4f5"]\nonly_expected = true\n', FakeGit()
    )
    assert r.run(checks).checks[1].detail == "2 commits ahead: all 2 expected present and no others"


def test_a_missing_base_fails_once_and_skips_what_needs_it(tmp_path: Path) -> None:
    r, checks = runner(tmp_path, "", FakeGit(base_ok=False))
    rep = r.run(checks, keep_going=True)
    assert [c.status for c in rep.checks] == [FAIL, SKIP, PASS, SKIP]
    assert rep.checks[0].detail == "base 'origin/main' names no commit in /src/app"
    assert "git fetch origin" in rep.checks[0].facts["advice"]
    assert rep.checks[1].detail.startswith("not run: needs the base, which failed")


def test_an_unreachable_host_fails_once_exits_3_and_skips_its_other_checks(tmp_path: Path) -> None:
    text = '[preflight]\nhealth = ["pi"]\n[[preflight.tests]]\nhost = "pi"\ncmd = "pytest -q"\n'
    r, checks = runner(tmp_path, text, FakeGit(), unreachable={"pi"})
    rep = r.run(checks, keep_going=True)
    assert [(c.name, c.status) for c in rep.checks][4:] == [
        ("pi: health tts", FAIL),
        ("pi: test pytest -q", SKIP),
    ]
    assert rep.checks[4].detail == "pi: connection refused"
    assert rep.checks[5].detail == "not run: pi is unreachable (pi: connection refused)"
    assert rep.exit_code == 3


def test_a_red_check_wins_over_an_unreachable_host_for_the_exit_code(tmp_path: Path) -> None:
    text = '[preflight]\ncommits = 9\nhealth = ["pi"]\n'
    r, checks = runner(tmp_path, text, FakeGit(), unreachable={"pi"})
    assert r.run(checks, keep_going=True).exit_code == 1


def test_not_a_git_checkout_is_a_usage_error(tmp_path: Path) -> None:
    class NoRepo(FakeGit):
        def toplevel(self):
            return None

    r, checks = runner(tmp_path, "", NoRepo())
    with pytest.raises(UsageError, match="not a git checkout"):
        r.run(checks)


# --- rendering ----------------------------------------------------------------------------------


def sample_report(ok: bool = True) -> PreflightReport:
    base = {"branch": "feature", "head": HEAD, "merge_base": BASE, "ahead": 2, "behind": 0}
    commits = [
        {"id": "a1b2c3d", "sha": C1.sha, "subject": "first"},
        {"id": "e4f5a6b", "sha": C2.sha, "subject": "second"},
    ]
    checks = [
        CheckResult("git: base", "git.base", None, PASS, "d", 0.01, base),
        CheckResult("git: commits", "git.commits", None, PASS, "d", 0.01, {"commits": commits}),
        CheckResult("git: clean", "git.clean", None, PASS, "working tree clean", 0.01, {"dirty": []}),
        CheckResult(
            "git: diff", "git.diff", None, PASS, "d", 0.01, {"files": 1, "insertions": 10, "deletions": 0}
        ),
        CheckResult(
            "panda: test tts",
            "tests",
            "panda",
            PASS if ok else FAIL,
            "40/40 passed" if ok else "39/40 passed, 1 failed; exit 1; expected 40 passed",
            12.5,
            {"cmd": "python -m pytest `x` -q", "cwd": "services/tts", "result": "40/40 passed"},
            0 if ok else 1,
            [] if ok else ["FAILED tests/test_x.py::test_y", "39 passed, 1 failed in 3.0s"],
        ),
        CheckResult(
            "panda: health phone",
            "health",
            "panda",
            PASS if ok else SKIP,
            "healthy" if ok else "not run: stopped at 'panda: test tts' (--keep-going runs every check)",
            0.2,
            {
                "service": "phone",
                "result": "healthy: http://127.0.0.1:8770/ answered 200",
                "last_line": "ready",
            }
            if ok
            else {},
        ),
    ]
    return PreflightReport(repo="/src/app", base="origin/main", checks=checks)


def test_markdown_verification_section_is_exact() -> None:
    assert report.preflight_markdown_text(sample_report()) == (
        "## Verification\n"
        "\n"
        "- Branch `feature` at `ccccccc`: 2 commits ahead of `origin/main`, 0 behind (merge base `bbbbbbb`)\n"
        "- Commits (2):\n"
        "  - `a1b2c3d` first\n"
        "  - `e4f5a6b` second\n"
        "- Diff stat vs the merge base: 1 file changed, 10 insertions(+), 0 deletions(-)\n"
        "- Working tree: clean\n"
        "- Tests:\n"
        "  - panda: ``python -m pytest `x` -q`` (in `services/tts`) — 40/40 passed\n"
        "- Health:\n"
        "  - panda: phone — healthy: http://127.0.0.1:8770/ answered 200; last log line: `ready`\n"
        "\n"
        "All 6 pre-flight checks passed.\n"
    )


def test_markdown_of_a_failed_run_says_so() -> None:
    text = report.preflight_markdown_text(sample_report(ok=False))
    assert (
        "  - panda: ``python -m pytest `x` -q`` (in `services/tts`) — **FAILED**: 39/40 passed, 1 failed;"
        in text
    )
    assert "  - panda: phone — skipped\n" in text
    # red in its first lines too: a paste of only the top cannot look green
    assert text.startswith(
        "## Verification\n\n**Pre-flight FAILED: 1 of 6 checks failed, 1 not run: not ready for review.**\n\n"
    )
    assert text.endswith(
        "**Pre-flight FAILED: 1 of 6 checks failed, 1 not run. First failure: panda: test tts: "
        "39/40 passed, 1 failed; exit 1; expected 40 passed**\n"
    )


def test_plain_table_shows_status_timing_output_and_summary() -> None:
    out = io.StringIO()
    report.preflight(report.Reporter("plain", out=out), sample_report(ok=False))
    text = out.getvalue()
    assert text.splitlines()[0] == "pre-flight of /src/app over origin/main"
    assert "panda: test tts      FAIL    12.50s  39/40 passed, 1 failed; exit 1; expected 40 passed" in text
    assert "  | 39 passed, 1 failed in 3.0s" in text
    assert text.splitlines()[-1].startswith("Pre-flight FAILED: 1 of 6 checks failed, 1 not run.")


def test_json_has_every_check_and_the_exit_code() -> None:
    out = io.StringIO()
    report.preflight(report.Reporter("json", out=out), sample_report(ok=False))
    data = json.loads(out.getvalue())
    assert data["ok"] is False and data["exit_code"] == 1
    assert data["summary"] == {"pass": 4, "fail": 1, "skip": 1}
    assert [c["status"] for c in data["checks"]] == ["pass", "pass", "pass", "pass", "fail", "skip"]
    assert data["checks"][4]["output"][-1] == "39 passed, 1 failed in 3.0s"


def test_rich_table_does_not_read_details_as_markup() -> None:
    rep = sample_report()
    rep.checks[2].detail = "[bold]x[/bold] in [preflight]"
    out = io.StringIO()
    report.preflight(report.Reporter("rich", out=out), rep)
    assert "[bold]x[/bold] in [preflight]" in out.getvalue()


def test_describe_says_what_each_planned_check_verifies(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        PF.replace("commits = 2\n", "commits = 2\nonly_expected = false\nmax_files = 15\n")
        + 'timeout = 90\n\n[[preflight.tests]]\nhost = "pi"\ncmd = "make test"\nexpect_regex = "ok"\n',
    )
    s = Settings(**{**vars(preflight.settings(inv, cwd="/src")), "same_head": True})
    described = [(c.name, preflight.describe(c, s, inv)) for c in preflight.plan(s, inv)]
    assert described == [
        (
            "git: fetch",
            "fetch origin/main from its remote first (a local branch or a commit id: nothing to fetch)",
        ),
        ("git: base", "origin/main names a commit in /src; report ahead/behind and the merge base"),
        ("git: commits", "exactly 2 commits ahead; contains a1b2c3d, 9988776"),
        ("git: clean", "no uncommitted or untracked files"),
        ("git: diff", "diff stat from the merge base: files <= 15"),
        ("panda: checkout", "~/her-os is at the local HEAD, with a clean tree (untracked files included)"),
        ("pi: checkout", "/srv/app is at the local HEAD, with a clean tree (untracked files included)"),
        ("panda: health phone", "phone running; no health check declared; last log line"),
        ("panda: health tts", "tts running; no health check declared; last log line"),
        ("pi: health tts", "tts running; no health check declared; last log line"),
        ("panda: test pytest -q", "in .: `pytest -q`: exit 0 and exactly 40 passed (timeout 600s)"),
        ("pi: test pytest -q", "in .: `pytest -q`: exit 0 (timeout 90s)"),
        ("pi: test make test", "in .: `make test`: exit 0 and /ok/ (timeout 600s)"),
    ]


def test_dry_run_plan_renders_without_running(tmp_path: Path) -> None:
    inv = load(tmp_path, PF)
    s = preflight.settings(inv, cwd="/src")
    out = io.StringIO()
    report.preflight_plan(
        report.Reporter("plain", out=out),
        [(c, preflight.describe(c, s, inv)) for c in preflight.plan(s, inv)],
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "pre-flight plan (nothing run)"
    assert lines[2].startswith("1   git: fetch  ") and lines[3].endswith(
        "origin/main names a commit in /src; report ahead/behind and the merge base"
    )
    assert len(lines) == 2 + len(preflight.plan(s, inv))


# --- fetch, diff minimums, expect_files, host checkout, parallel hosts (fakes) ---------------------


def test_the_base_is_fetched_from_its_remote_first(tmp_path: Path) -> None:
    git = FakeGit()
    r, checks = runner(tmp_path, "", git, with_fetch=True)
    rep = r.run(checks)
    assert git.fetched == [("origin", "main")]
    assert (rep.checks[0].name, rep.checks[0].status) == ("git: fetch", PASS)
    assert rep.checks[0].detail == "fetched main from origin: origin/main at bbbbbbb (unchanged)"


def test_no_fetch_passes_and_shows_the_age_of_the_local_ref(tmp_path: Path) -> None:
    git = FakeGit()
    r, checks = runner(tmp_path, "", git, with_fetch=True, fetch=False)
    c = r.run(checks).checks[0]
    assert git.fetched == []
    assert (c.status, c.detail) == (
        PASS,
        "not fetched (--no-fetch): origin/main at bbbbbbb, last fetched 1h02m ago",
    )


def test_a_failed_fetch_fails_and_points_at_no_fetch(tmp_path: Path) -> None:
    git = FakeGit()
    git.fetch_error = "`git fetch` failed (exit 128): fatal: could not read from remote repository"
    r, checks = runner(tmp_path, "", git, with_fetch=True)
    rep = r.run(checks)
    assert rep.checks[0].status == FAIL and rep.exit_code == 1
    assert rep.checks[0].detail.startswith("cannot fetch main from origin: `git fetch` failed")
    advice = rep.checks[0].facts["advice"]
    assert "--no-fetch" in advice and "last fetched 1h02m ago" in advice
    assert {c.status for c in rep.checks[1:]} == {SKIP}


def test_a_local_base_has_nothing_to_fetch(tmp_path: Path) -> None:
    git = FakeGit()
    r, checks = runner(tmp_path, "", git, with_fetch=True, base="parent-branch")
    c = r.run(checks).checks[0]
    assert git.fetched == [] and c.status == PASS and "nothing to fetch" in c.detail


def test_diff_minimums_fail_an_empty_or_tiny_diff(tmp_path: Path) -> None:
    s = Settings(repo=".", base="b", min_files=2, min_insertions=10, max_insertions=100)
    assert preflight.judge_bounds(DiffStat(0, 0, 0), s) == ["0 files < min 2", "0 insertions < min 10"]
    assert preflight.judge_bounds(DiffStat(2, 10, 0), s) == []
    r, checks = runner(tmp_path, "[preflight]\nmin_files = 3\n", FakeGit())
    c = r.run(checks).checks[3]
    assert (c.name, c.status) == ("git: diff", FAIL)
    assert c.detail == "2 files changed, 30 insertions(+), 4 deletions(-): 2 files < min 3"
    r, checks = runner(tmp_path, "[preflight]\nmin_files = 2\n", FakeGit())
    assert r.run(checks).checks[3].status == PASS


def test_a_minimum_above_its_maximum_is_refused(tmp_path: Path) -> None:
    msg = fails(tmp_path, "[preflight]\nmin_files = 5\nmax_files = 2\n")
    assert "[preflight.min_files] is 5, more than max_files = 2" in msg


def test_expect_files_pass_only_for_these_paths_and_all_of_them(tmp_path: Path) -> None:
    globs = '["app/**", "README.md", "docs/*.md"]'
    git = FakeGit()
    git.paths = ["app/one.py", "app/sub/two.py", "README.md", "docs/usage.md"]
    r, checks = runner(tmp_path, f"[preflight]\nexpect_files = {globs}\n", git)
    c = r.run(checks).checks[4]
    assert (c.name, c.status) == ("git: files", PASS)
    assert c.detail == "4 paths touched, all within app/**, README.md, docs/*.md"
    git.paths = ["app/one.py", "README.md", "docs/sub/deep.md", "setup.py"]
    r, checks = runner(tmp_path, f"[preflight]\nexpect_files = {globs}\n", git)
    c = r.run(checks).checks[4]
    assert c.status == FAIL
    assert c.detail == "2 unexpected paths: docs/sub/deep.md, setup.py; nothing touched matches docs/*.md"
    assert c.facts["stray"] == ["docs/sub/deep.md", "setup.py"] and c.facts["unused"] == ["docs/*.md"]


def test_expect_files_must_be_relative_globs(tmp_path: Path) -> None:
    assert "is not a path glob relative to the repository" in fails(
        tmp_path, '[preflight]\nexpect_files = ["/etc/passwd"]\n'
    )


class FakeSession:
    """A host's agent for the runner: exec answers from a function of (host, args)."""

    def __init__(self, host: str, answer) -> None:
        self.host, self.answer = host, answer

    def call(self, op, args=None, on_event=None, timeout=None):
        assert op == "exec"
        return self.answer(self.host, args)


def connect_to(answer):
    @contextmanager
    def connect(inv, host):
        yield FakeSession(host.name, answer)

    return connect


def exec_result(code: int = 0, stdout: str = "", stderr: str = "", **more) -> dict:
    return {"exit_code": code, "stdout": stdout, "stderr": stderr, "timed_out": False, "duration": 0.1,
            **more}


def test_the_host_checkout_must_be_at_head_and_clean(tmp_path: Path) -> None:
    text = '[preflight]\nsame_head = true\n[[preflight.tests]]\nhost = "pi"\ncmd = "pytest -q"\n'
    inv = load(tmp_path, text)
    s = preflight.settings(inv)
    dirty = HEAD + "\n" + " M tests/test_x.py\0?? notes.txt\0?? app/__pycache__/\0"
    seen = []
    host_state = {"out": ""}

    def answer(host, args):
        seen.append(args)
        if args["cmd"] != "pytest -q":
            return exec_result(0, host_state["out"])
        return exec_result(0, "3 passed in 0.1s\n")

    for out, ok, detail in (
        (
            dirty,
            False,
            "the checkout /srv/app has 2 uncommitted changes: M tests/test_x.py, ?? notes.txt: the remote "
            "checks would run uncommitted code: commit or discard the changes on the host "
            "(`git -C /srv/app status`), then deploy the branch",
        ),
        (
            HEAD + "\n" + "?? app/__pycache__/\0",
            True,
            "/srv/app is at ccccccc, the local HEAD; tree clean (1 untracked bytecode caches ignored)",
        ),
        (
            BASE + "\n",
            False,
            "the checkout /srv/app is at bbbbbbb, this branch is at ccccccc: deploy the branch first",
        ),
    ):
        host_state["out"] = out
        r = preflight.Runner(inv, s, git=FakeGit(), connect_fn=connect_to(answer))
        checks = [c for c in preflight.plan(s, inv) if c.kind != "git.fetch"]
        c = r.run(checks).checks[4]
        assert (c.name, c.status, c.detail) == ("pi: checkout", PASS if ok else FAIL, detail)
    head_call = seen[0]
    assert head_call["cwd"] == "/srv/app"
    assert "status --porcelain=v1 -z --untracked-files=normal" in head_call["cmd"]
    assert head_call["env"]["GIT_OPTIONAL_LOCKS"] == "0"
    # the agent is given the host's services, whose secrets it redacts from the output
    assert [x["name"] for x in head_call["all_services"]] == ["tts"] and head_call["base"] == "/srv/app"


def test_remote_checks_run_on_all_hosts_at_once_and_the_first_declared_failure_is_reported(
    tmp_path: Path,
) -> None:
    """panda's test is declared first but fails LAST: it waits for pi's test, which fails at once.
    Run one host after the other, panda's test would wait in vain (the twin below)."""
    import threading

    text = (
        '[preflight]\n[[preflight.tests]]\nhost = "panda"\ncmd = "slow"\n'
        '[[preflight.tests]]\nhost = "pi"\ncmd = "fast"\n[[preflight.tests]]\nhost = "pi"\ncmd = "after"\n'
    )
    inv = load(tmp_path, text)
    s = preflight.settings(inv)

    def make_answer():
        pi_ran = threading.Event()

        def answer(host, args):
            if args["cmd"] == "fast":
                pi_ran.set()
                return exec_result(1, "1 failed in 0.1s\n")
            if args["cmd"] == "slow":
                met = pi_ran.wait(timeout=5)
                return exec_result(1, "2 failed in 0.1s\n" if met else "", "" if met else "never met pi")
            return exec_result(0, "1 passed in 0.1s\n")

        return answer

    checks = [c for c in preflight.plan(s, inv) if c.kind != "git.fetch"]
    rep = preflight.Runner(inv, s, git=FakeGit(), connect_fn=connect_to(make_answer())).run(checks)
    assert [(c.name, c.status) for c in rep.checks][4:] == [
        ("panda: test slow", FAIL),
        ("pi: test fast", SKIP),
        ("pi: test after", SKIP),
    ]
    assert rep.checks[4].detail == "0/2 passed, 2 failed; exit 1"  # met pi: they ran at the same time
    assert rep.checks[5].detail == (
        "not counted: stopped at 'panda: test slow' (--keep-going runs every check); "
        "it ran alongside: fail: 0/1 passed, 1 failed; exit 1"
    )
    assert rep.checks[6].detail == "not run: stopped at 'panda: test slow' (--keep-going runs every check)"
    assert report.preflight_markdown_text(rep).count("skipped") == 2
    # one host after the other: panda's test never meets pi's
    seq = preflight.Runner(inv, s, git=FakeGit(), connect_fn=connect_to(make_answer()), workers=1)
    assert seq.run(checks).checks[4].detail.startswith("exit 1, no pytest summary line in the output")


def test_a_failed_run_keeps_a_bounded_tail_of_bounded_lines() -> None:
    out = "\n".join(f"line {i}" for i in range(100)) + "\n" + "x" * 5000 + "\n1 failed in 0.1s\n"
    o = preflight.judge_test(pytest_test(), run(1, out))
    assert len(o.output) == preflight.OUTPUT_TAIL and o.output[-1] == "1 failed in 0.1s"
    assert o.output[-2] == "x" * preflight.OUTPUT_LINE + " [...]"


def test_the_new_preflight_keys_parse_and_have_defaults(tmp_path: Path) -> None:
    assert (Preflight().fetch, Preflight().min_files, Preflight().expect_files, Preflight().body) == (
        True, None, (), None
    )
    inv = load(
        tmp_path,
        '[preflight]\nfetch = false\nmin_files = 1\nmin_insertions = 10\nmin_deletions = 0\n'
        'expect_files = ["src/**", "README.md"]\nbody = "docs/pr-template.md"\n',
    )
    p = inv.preflight
    assert (p.fetch, p.min_files, p.min_insertions, p.min_deletions) == (False, 1, 10, 0)
    assert p.expect_files == ("src/**", "README.md") and p.body == "docs/pr-template.md"
    s = preflight.settings(inv)
    assert (s.fetch, s.min_files, s.body) == (False, 1, "docs/pr-template.md")
    assert s.expect_files == ("src/**", "README.md")
    assert preflight.settings(inv, fetch=True).fetch is True  # the flag wins
    assert "[preflight.body] must not be empty" in fails(tmp_path, '[preflight]\nbody = " "\n')
    assert "[preflight.fetch] must be" in fails(tmp_path, '[preflight]\nfetch = "no"\n')
