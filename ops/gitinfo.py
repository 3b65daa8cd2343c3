"""Local git facts for pre-flight: pure argv builders and output parsers, plus a thin runner.

Everything here reads the LOCAL checkout, except ``fetch`` (the base's remote, before the checks)
and ``ls_remote`` (is the branch pushed, for ``inv pr``). The argv builders and parsers are pure and
tested by exact output; ``Git`` only runs them (bounded by a timeout, in the C locale, never
prompting; network commands in their own session, so an ssh password prompt cannot reach a tty).

The same facts about a HOST's checkout (commit + clean tree) come from ``host_state_script``, run by
the agent there, and ``parse_host_state``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ops.errors import ActionFailed

DEFAULT_TIMEOUT = 30.0
_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


class GitError(ActionFailed):
    """A git command failed or could not run."""


@dataclass(frozen=True)
class Commit:
    sha: str
    short: str
    subject: str


@dataclass(frozen=True)
class DiffStat:
    files: int = 0
    insertions: int = 0
    deletions: int = 0

    @property
    def text(self) -> str:
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        return (
            f"{n(self.files, 'file', 'files')} changed, "
            f"{n(self.insertions, 'insertion(+)', 'insertions(+)')}, "
            f"{n(self.deletions, 'deletion(-)', 'deletions(-)')}"
        )


@dataclass(frozen=True)
class Expected:
    """How a list of expected commit ids matches the commits ahead of the base."""

    found: tuple[tuple[str, Commit], ...]  # (id as given, commit)
    missing: tuple[str, ...]
    ambiguous: tuple[tuple[str, tuple[Commit, ...]], ...]
    unexpected: tuple[Commit, ...]


# --- argv builders (pure) -----------------------------------------------------------------------


def git_argv(repo: str, *args: str) -> list[str]:
    """git run against ``repo``, never paging, with UTF-8 log output and unquoted paths."""
    return [
        "git",
        "--no-pager",
        "-C",
        repo,
        "-c",
        "core.quotepath=off",
        "-c",
        "i18n.logOutputEncoding=UTF-8",
        *args,
    ]


def toplevel_args() -> list[str]:
    return ["rev-parse", "--show-toplevel"]


def branch_args() -> list[str]:
    """Prints the branch name, or 'HEAD' when detached."""
    return ["rev-parse", "--abbrev-ref", "HEAD"]


def verify_args(rev: str) -> list[str]:
    """Prints the full sha of a commit, or fails (quietly) if ``rev`` names no commit."""
    return ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"]


def merge_base_args(base: str, head: str = "HEAD") -> list[str]:
    return ["merge-base", "--end-of-options", base, head]


def ahead_behind_args(base: str, head: str = "HEAD") -> list[str]:
    """Prints 'BEHIND<TAB>AHEAD': commits only in base, commits only in head."""
    return ["rev-list", "--left-right", "--count", "--end-of-options", f"{base}...{head}"]


def commits_args(base: str, head: str = "HEAD") -> list[str]:
    """Commits in head and not in base, oldest first: sha, short id, subject, separated by 0x1f."""
    return ["log", "--reverse", "--format=%H%x1f%h%x1f%s", "--end-of-options", f"{base}..{head}"]


def status_args() -> list[str]:
    """Uncommitted changes, untracked files included (a new file left out of the commit is exactly
    what a pre-flight must catch); NUL-separated so any file name parses."""
    return ["status", "--porcelain=v1", "-z", "--untracked-files=normal"]


def shortstat_args(merge_base: str, head: str = "HEAD") -> list[str]:
    """The diff a PR shows: from the merge base to head (committed changes only)."""
    return ["diff", "--shortstat", "--no-ext-diff", "--end-of-options", merge_base, head]


def object_type_args(rev: str) -> list[str]:
    return ["cat-file", "-t", "--end-of-options", rev]


def remotes_args() -> list[str]:
    return ["remote"]


def fetch_args(remote: str, branch: str) -> list[str]:
    """Fetch one branch of a remote into its remote-tracking ref (forced, as git's default refspec:
    a rewritten base must be seen as rewritten, not refused)."""
    return [
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        remote,
        f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}",
    ]


def ref_time_args(ref: str) -> list[str]:
    """The time of the ref's last update, from its reflog: prints 'REF@{UNIXTIME}'."""
    return ["log", "-g", "-1", "--date=unix", "--format=%gd", "--end-of-options", ref]


def changed_files_args(merge_base: str, head: str = "HEAD") -> list[str]:
    """Every path the PR's diff touches (a rename is its old and its new path), NUL-separated."""
    return [
        "diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--end-of-options", merge_base, head
    ]


def ls_remote_args(remote: str, branch: str) -> list[str]:
    return ["ls-remote", "--heads", remote, f"refs/heads/{branch}"]


def host_state_script() -> str:
    """For the agent's exec on a host, in its checkout: the HEAD commit on the first line, then
    ``git status`` (untracked files included, NUL-separated). GIT_OPTIONAL_LOCKS=0: reading the
    state never rewrites the host's index."""
    head = shlex.join(["git", "rev-parse", "--verify", "HEAD"])
    status = shlex.join(["git", "-c", "core.quotepath=off", *status_args()])
    return f"{head} && {status}"


HOST_GIT_ENV = {"LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}


# --- parsers (pure) -----------------------------------------------------------------------------


def parse_ahead_behind(text: str) -> tuple[int, int]:
    """'2\\t5' -> (ahead=5, behind=2)."""
    parts = text.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"unexpected rev-list --left-right --count output: {text!r}")
    behind, ahead = int(parts[0]), int(parts[1])
    return ahead, behind


def parse_commits(text: str) -> list[Commit]:
    out: list[Commit] = []
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split("\x1f", 2)
        if len(parts) != 3:
            raise ValueError(f"unexpected git log line: {line!r}")
        out.append(Commit(sha=parts[0], short=parts[1], subject=parts[2]))
    return out


def parse_remotes(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def split_remote_ref(ref: str, remotes: Sequence[str]) -> tuple[str, str] | None:
    """'origin/main' -> ('origin', 'main') when 'origin' is a configured remote; None for a local
    branch, a tag or a commit id (nothing to fetch). The longest matching remote name wins."""
    name = ref[len("refs/remotes/") :] if ref.startswith("refs/remotes/") else ref
    for remote in sorted(remotes, key=len, reverse=True):
        if name.startswith(remote + "/") and len(name) > len(remote) + 1:
            return remote, name[len(remote) + 1 :]
    return None


_REFLOG_TIME = re.compile(r"@\{(\d+)\}\s*$")


def parse_ref_time(text: str) -> int | None:
    """'refs/remotes/origin/main@{1714979289}' -> 1714979289; None without a reflog entry."""
    m = _REFLOG_TIME.search(text.strip())
    return int(m.group(1)) if m else None


def parse_names(text: str) -> list[str]:
    """NUL-separated paths -> list, in git's order."""
    return [p for p in text.split("\0") if p]


def parse_ls_remote(text: str) -> str | None:
    """The sha of the first ref ls-remote printed, or None (no such branch there)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            return parts[0]
    return None


def is_cache(entry: str) -> bool:
    """An untracked Python bytecode cache ('?? pkg/__pycache__/', '?? x.pyc'): written by running
    the code (the pre-flight's own test run), purged by every deploy, never an edit."""
    if not entry.startswith("?? "):
        return False
    path = entry[3:].rstrip("/")
    return path.endswith(".pyc") or path == "__pycache__" or path.endswith("/__pycache__")


def parse_host_state(text: str) -> tuple[str | None, list[str], list[str]]:
    """``host_state_script`` output -> (head sha or None, dirty entries, ignored caches)."""
    first, _, rest = text.partition("\n")
    head = first.strip()
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head):
        return None, [], []
    entries = parse_status(rest)
    return head, [e for e in entries if not is_cache(e)], [e for e in entries if is_cache(e)]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob, as in .gitignore-style specs: '*' and '?' stay inside one directory, '**'
    crosses directories ('src/**' is everything under src, '**/test_*.py' at any depth),
    '[abc]' a class. Matched against the whole repository-relative path."""
    i, out = 0, []
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def match_files(globs: Sequence[str], paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths no glob matches, globs that match no path): both empty means the diff touches these
    paths and only these."""
    compiled = [(g, glob_regex(g)) for g in globs]
    stray = [p for p in paths if not any(rx.match(p) for _, rx in compiled)]
    unused = [g for g, rx in compiled if not any(rx.match(p) for p in paths)]
    return stray, unused


def parse_status(text: str) -> list[str]:
    """``status --porcelain=v1 -z`` -> ['M a.py', '?? new.txt', 'R new <- old', ...]."""
    entries = text.split("\0")
    out: list[str] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC" and i < len(entries):
            path = f"{path} <- {entries[i]}"
            i += 1
        out.append(f"{code.strip()} {path}")
    return out


_STAT = re.compile(r"(\d+) (files? changed|insertions?\(\+\)|deletions?\(-\))")


def parse_shortstat(text: str) -> DiffStat:
    """' 3 files changed, 10 insertions(+), 2 deletions(-)' -> DiffStat(3, 10, 2); '' -> zeros."""
    values = {"files": 0, "insertions": 0, "deletions": 0}
    for count, what in _STAT.findall(text):
        key = "files" if what[0] == "f" else "insertions" if what[0] == "i" else "deletions"
        values[key] = int(count)
    return DiffStat(**values)


def is_commit_id(text: str) -> bool:
    """A short or full hexadecimal commit id (4 to 40 digits)."""
    return bool(_HEX.match(text))


def match_expected(expected: Sequence[str], commits: Sequence[Commit]) -> Expected:
    """Match expected (short) ids against the commits ahead of the base, by sha prefix."""
    found: list[tuple[str, Commit]] = []
    missing: list[str] = []
    ambiguous: list[tuple[str, tuple[Commit, ...]]] = []
    claimed: set[str] = set()
    for wanted in expected:
        prefix = wanted.lower()
        hits = tuple(c for c in commits if c.sha.lower().startswith(prefix))
        if not hits:
            missing.append(wanted)
        elif len(hits) > 1:
            ambiguous.append((wanted, hits))
            claimed.update(c.sha for c in hits)
        else:
            found.append((wanted, hits[0]))
            claimed.add(hits[0].sha)
    unexpected = tuple(c for c in commits if c.sha not in claimed)
    return Expected(tuple(found), tuple(missing), tuple(ambiguous), unexpected)


# --- the thin runner ----------------------------------------------------------------------------

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


class Git:
    """Runs git in one local checkout. Every call is bounded by ``timeout``."""

    def __init__(self, repo: str, timeout: float = DEFAULT_TIMEOUT, runner: Runner = subprocess.run) -> None:
        self.repo = repo
        self.timeout = timeout
        self._run = runner

    def run(
        self,
        args: Sequence[str],
        ok_codes: tuple[int, ...] | None = (0,),
        timeout: float | None = None,
        network: bool = False,
    ) -> tuple[int, str]:
        """(exit code, stdout); a GitError unless the code is in ok_codes (None: any code).
        ``network``: in a new session (no controlling tty: ssh fails instead of prompting)."""
        argv = git_argv(self.repo, *args)
        env = dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", GIT_PAGER="cat")
        limit = timeout or self.timeout
        extra = {"start_new_session": True} if network else {}
        try:
            p = self._run(
                argv, capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=limit, **extra
            )
        except FileNotFoundError:
            raise GitError("git is not installed (no `git` on PATH)", "install git") from None
        except subprocess.TimeoutExpired:
            raise GitError(
                f"`git {' '.join(args)}` in {self.repo} took longer than {limit:.0f}s"
            ) from None
        out = p.stdout.decode("utf-8", "replace")
        if ok_codes is not None and p.returncode not in ok_codes:
            err = p.stderr.decode("utf-8", "replace").strip()
            raise GitError(f"`git {' '.join(args)}` in {self.repo} failed (exit {p.returncode}): {err}")
        return p.returncode, out

    def out(self, args: Sequence[str]) -> str:
        return self.run(args)[1]

    def toplevel(self) -> str | None:
        """The work tree's root, or None if ``repo`` is not inside a git work tree."""
        code, out = self.run(toplevel_args(), ok_codes=(0, 128))
        return out.strip() if code == 0 and out.strip() else None

    def branch(self) -> str | None:
        """The current branch, or None when HEAD is detached."""
        name = self.out(branch_args()).strip()
        return None if name == "HEAD" else name

    def resolve(self, rev: str) -> str | None:
        """The full sha of a commit, or None if ``rev`` names no commit here."""
        code, out = self.run(verify_args(rev), ok_codes=(0, 1, 128))
        return out.strip() if code == 0 and out.strip() else None

    def merge_base(self, base: str, head: str = "HEAD") -> str | None:
        code, out = self.run(merge_base_args(base, head), ok_codes=(0, 1))
        return out.strip() if code == 0 else None

    def ahead_behind(self, base: str, head: str = "HEAD") -> tuple[int, int]:
        return parse_ahead_behind(self.out(ahead_behind_args(base, head)))

    def commits(self, base: str, head: str = "HEAD") -> list[Commit]:
        return parse_commits(self.out(commits_args(base, head)))

    def status(self) -> list[str]:
        return parse_status(self.out(status_args()))

    def shortstat(self, merge_base: str, head: str = "HEAD") -> DiffStat:
        return parse_shortstat(self.out(shortstat_args(merge_base, head)))

    def exists(self, rev: str) -> bool:
        """True if the object database knows a commit by this (short) id."""
        code, out = self.run(object_type_args(rev), ok_codes=(0, 1, 128))
        return code == 0 and out.strip() == "commit"

    def remotes(self) -> list[str]:
        return parse_remotes(self.out(remotes_args()))

    def fetch(self, remote: str, branch: str, timeout: float) -> None:
        self.run(fetch_args(remote, branch), timeout=timeout, network=True)

    def ref_time(self, ref: str) -> int | None:
        """When the ref was last updated here (its reflog), or None if unknown."""
        code, out = self.run(ref_time_args(ref), ok_codes=None)
        return parse_ref_time(out) if code == 0 else None

    def last_sync(self, remote: str, branch: str) -> int | None:
        """When this repository last heard from ``remote`` about the base, as a unix time: the latest
        of the tracking ref's reflog (an update), FETCH_HEAD's mtime (the last fetch, even one that
        changed nothing) and the remote's HEAD reflog (the clone). None if none exists."""
        times = [
            self.ref_time(f"refs/remotes/{remote}/{branch}"),
            self.ref_time(f"refs/remotes/{remote}/HEAD"),
        ]
        code, out = self.run(["rev-parse", "--git-path", "FETCH_HEAD"], ok_codes=None)
        if code == 0 and out.strip():
            path = os.path.join(self.repo, out.strip())
            try:
                times.append(int(os.path.getmtime(path)))
            except OSError:
                pass
        known = [t for t in times if t is not None]
        return max(known) if known else None

    def changed_files(self, merge_base: str, head: str = "HEAD") -> list[str]:
        return parse_names(self.out(changed_files_args(merge_base, head)))

    def ls_remote(self, remote: str, branch: str, timeout: float) -> str | None:
        return parse_ls_remote(self.out_net(ls_remote_args(remote, branch), timeout))

    def out_net(self, args: Sequence[str], timeout: float) -> str:
        return self.run(args, timeout=timeout, network=True)[1]
