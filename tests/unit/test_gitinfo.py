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


# --- fetch, host state, globs (issue 16) ---------------------------------------------------------


def test_the_base_remote_is_split_only_for_a_configured_remote() -> None:
    from ops.gitinfo import split_remote_ref

    assert split_remote_ref("origin/main", ["origin"]) == ("origin", "main")
    assert split_remote_ref("refs/remotes/up/feat/x", ["origin", "up"]) == ("up", "feat/x")
    assert split_remote_ref("team/a/main", ["team", "team/a"]) == ("team/a", "main")  # longest wins
    assert split_remote_ref("parent-branch", ["origin"]) is None  # a stacked PR's local parent
    assert split_remote_ref("feature/x", ["origin"]) is None
    assert split_remote_ref("origin/", ["origin"]) is None


def test_fetch_updates_only_the_base_tracking_ref_forced() -> None:
    from ops.gitinfo import fetch_args

    assert fetch_args("origin", "main") == [
        "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "origin",
        "+refs/heads/main:refs/remotes/origin/main",
    ]


def test_ref_time_is_read_from_the_reflog_selector() -> None:
    from ops.gitinfo import parse_ref_time

    assert parse_ref_time("refs/remotes/origin/main@{1714979289}\n") == 1714979289
    assert parse_ref_time("") is None


def test_host_state_is_head_then_status_and_caches_are_set_apart() -> None:
    from ops.gitinfo import host_state_script, parse_host_state

    assert host_state_script() == (
        "git rev-parse --verify HEAD && git -c core.quotepath=off status --porcelain=v1 -z "
        "--untracked-files=normal"
    )
    sha = "a" * 40
    text = f"{sha}\n M app.py\0?? new file.txt\0?? pkg/__pycache__/\0?? x.pyc\0?? newpkg/\0"
    assert parse_host_state(text) == (
        sha,
        ["M app.py", "?? new file.txt", "?? newpkg/"],
        ["?? pkg/__pycache__/", "?? x.pyc"],
    )
    assert parse_host_state(f"{sha}\n") == (sha, [], [])
    assert parse_host_state("fatal: not a git repository\n") == (None, [], [])


def test_globs_keep_star_inside_a_directory_and_doublestar_across() -> None:
    from ops.gitinfo import glob_regex, match_files

    def hits(pattern: str, paths: list[str]) -> list[str]:
        return [p for p in paths if glob_regex(pattern).match(p)]

    paths = ["app/one.py", "app/sub/two.py", "README.md", "docs/a.md", "docs/x/b.md", "test_a.py"]
    paths.append("t/test_b.py")
    assert hits("app/*.py", paths) == ["app/one.py"]
    assert hits("app/**", paths) == ["app/one.py", "app/sub/two.py"]
    assert hits("**/test_*.py", paths) == ["test_a.py", "t/test_b.py"]
    assert hits("docs/?.md", paths) == ["docs/a.md"]
    assert hits("[RD]*", paths) == ["README.md"]
    assert hits("README.md", paths) == ["README.md"]
    assert match_files(["app/**", "README.md"], ["app/one.py", "README.md"]) == ([], [])
    assert match_files(["app/**", "CHANGES.md"], ["app/one.py", "setup.py"]) == (["setup.py"], ["CHANGES.md"])


def test_changed_files_count_both_sides_of_a_rename() -> None:
    from ops.gitinfo import changed_files_args, parse_names

    assert "--no-renames" in changed_files_args("mb") and "-z" in changed_files_args("mb")
    assert parse_names("a.py\0dir/b c.py\0") == ["a.py", "dir/b c.py"]
