"""gitinfo: exact git argv, parsers of git's output, expected-id matching, and the runner's errors."""

from __future__ import annotations

import subprocess

import pytest

from ops import gitinfo
from ops.gitinfo import Commit, DiffStat, Git, GitError


def test_git_argv_never_pages_and_targets_the_repo() -> None:
    assert gitinfo.git_argv("/src/app", "status") == [
        "git",
        "--no-pager",
        "-C",
        "/src/app",
        "-c",
        "core.quotepath=off",
        "-c",
        "i18n.logOutputEncoding=UTF-8",
        "status",
    ]


def test_argv_builders_are_exact() -> None:
    assert gitinfo.toplevel_args() == ["rev-parse", "--show-toplevel"]
    assert gitinfo.branch_args() == ["rev-parse", "--abbrev-ref", "HEAD"]
    assert gitinfo.verify_args("origin/main") == [
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        "origin/main^{commit}",
    ]
    assert gitinfo.merge_base_args("origin/main") == ["merge-base", "--end-of-options", "origin/main", "HEAD"]
    assert gitinfo.ahead_behind_args("origin/main") == [
        "rev-list",
        "--left-right",
        "--count",
        "--end-of-options",
        "origin/main...HEAD",
    ]
    assert gitinfo.commits_args("abc", "def") == [
        "log",
        "--reverse",
        "--format=%H%x1f%h%x1f%s",
        "--end-of-options",
        "abc..def",
    ]
    assert gitinfo.status_args() == ["status", "--porcelain=v1", "-z", "--untracked-files=normal"]
    assert gitinfo.shortstat_args("abc") == [
        "diff",
        "--shortstat",
        "--no-ext-diff",
        "--end-of-options",
        "abc",
        "HEAD",
    ]
    assert gitinfo.object_type_args("a1b2") == ["cat-file", "-t", "--end-of-options", "a1b2"]


def test_a_base_that_looks_like_an_option_stays_a_revision() -> None:
    # --end-of-options comes before every user-given revision
    argv = gitinfo.verify_args("--output=/tmp/x")
    assert argv.index("--end-of-options") < argv.index("--output=/tmp/x^{commit}")


def test_parse_ahead_behind_reads_behind_then_ahead() -> None:
    assert gitinfo.parse_ahead_behind("2\t5\n") == (5, 2)
    with pytest.raises(ValueError):
        gitinfo.parse_ahead_behind("garbage")


def test_parse_commits_keeps_subjects_with_separators() -> None:
    text = "a" * 40 + "\x1faaaaaaa\x1ffix: a | b, c\n" + "b" * 40 + "\x1fbbbbbbb\x1fsecond\n"
    assert gitinfo.parse_commits(text) == [
        Commit("a" * 40, "aaaaaaa", "fix: a | b, c"),
        Commit("b" * 40, "bbbbbbb", "second"),
    ]
    assert gitinfo.parse_commits("") == []


def test_parse_status_handles_untracked_renames_and_odd_names() -> None:
    text = " M ops/a.py\0?? new file.txt\0R  new.py\0old.py\0MM both.py\0"
    assert gitinfo.parse_status(text) == ["M ops/a.py", "?? new file.txt", "R new.py <- old.py", "MM both.py"]
    assert gitinfo.parse_status("") == []


@pytest.mark.parametrize(
    ("text", "stat"),
    [
        (" 3 files changed, 10 insertions(+), 2 deletions(-)\n", DiffStat(3, 10, 2)),
        (" 1 file changed, 1 insertion(+)\n", DiffStat(1, 1, 0)),
        (" 1 file changed, 4 deletions(-)\n", DiffStat(1, 0, 4)),
        (" 2 files changed, 0 insertions(+), 0 deletions(-)\n", DiffStat(2, 0, 0)),
        ("", DiffStat(0, 0, 0)),
    ],
)
def test_parse_shortstat(text: str, stat: DiffStat) -> None:
    assert gitinfo.parse_shortstat(text) == stat


def test_diffstat_text_is_git_wording() -> None:
    assert DiffStat(3, 10, 2).text == "3 files changed, 10 insertions(+), 2 deletions(-)"
    assert DiffStat(1, 1, 1).text == "1 file changed, 1 insertion(+), 1 deletion(-)"


def test_commit_ids_are_hex_of_4_to_40_digits() -> None:
    assert gitinfo.is_commit_id("a1b2c3d")
    assert gitinfo.is_commit_id("A1B2")
    assert not gitinfo.is_commit_id("abc")
    assert not gitinfo.is_commit_id("main")
    assert not gitinfo.is_commit_id("a" * 41)


COMMITS = [
    Commit("a1b2c3d4" + "0" * 32, "a1b2c3d", "one"),
    Commit("a1b2ffff" + "0" * 32, "a1b2fff", "two"),
    Commit("99887766" + "0" * 32, "9988776", "three"),
]


def test_match_expected_by_prefix_case_insensitive() -> None:
    m = gitinfo.match_expected(["A1B2C3D", "998877"], COMMITS)
    assert [(w, c.subject) for w, c in m.found] == [("A1B2C3D", "one"), ("998877", "three")]
    assert m.missing == ()
    assert m.ambiguous == ()
    assert [c.subject for c in m.unexpected] == ["two"]


def test_match_expected_reports_missing_and_ambiguous() -> None:
    m = gitinfo.match_expected(["a1b2", "deadbeef"], COMMITS)
    assert m.missing == ("deadbeef",)
    assert [(w, [c.subject for c in cs]) for w, cs in m.ambiguous] == [("a1b2", ["one", "two"])]
    assert [c.subject for c in m.unexpected] == ["three"]


class FakeRun:
    def __init__(self, code: int = 0, out: bytes = b"", err: bytes = b"", exc: Exception | None = None):
        self.code, self.out, self.err, self.exc = code, out, err, exc
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, **kw):
        self.calls.append((argv, kw))
        if self.exc is not None:
            raise self.exc
        return subprocess.CompletedProcess(argv, self.code, self.out, self.err)


def test_runner_uses_c_locale_no_prompt_and_a_timeout() -> None:
    fake = FakeRun(out=b"main\n")
    assert Git("/r", timeout=7, runner=fake).branch() == "main"
    argv, kw = fake.calls[0]
    assert argv == gitinfo.git_argv("/r", *gitinfo.branch_args())
    assert kw["timeout"] == 7
    assert kw["env"]["LC_ALL"] == "C" and kw["env"]["GIT_TERMINAL_PROMPT"] == "0"
    assert kw["stdin"] == subprocess.DEVNULL


def test_detached_head_has_no_branch() -> None:
    assert Git("/r", runner=FakeRun(out=b"HEAD\n")).branch() is None


def test_a_failing_git_command_raises_with_its_stderr() -> None:
    fake = FakeRun(code=128, err=b"fatal: bad revision 'nope'\n")
    with pytest.raises(GitError, match=r"failed \(exit 128\): fatal: bad revision 'nope'"):
        Git("/r", runner=fake).commits("nope")


def test_unknown_revision_resolves_to_none() -> None:
    assert Git("/r", runner=FakeRun(code=1)).resolve("nope") is None


def test_outside_a_work_tree_toplevel_is_none() -> None:
    assert Git("/r", runner=FakeRun(code=128, err=b"fatal: not a git repository")).toplevel() is None


def test_git_missing_or_hanging_is_a_clear_error() -> None:
    with pytest.raises(GitError, match="git is not installed"):
        Git("/r", runner=FakeRun(exc=FileNotFoundError("git"))).status()
    with pytest.raises(GitError, match="took longer than 3s"):
        Git("/r", timeout=3, runner=FakeRun(exc=subprocess.TimeoutExpired("git", 3))).status()
