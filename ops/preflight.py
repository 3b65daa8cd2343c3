"""`inv preflight`: the checks to pass before opening a PR, as data, and the runner that runs them.

The checks come from ``[preflight]`` in hosts.toml (parsed by ops.inventory), overridden by flags:

- git, local (ops.gitinfo): the base resolves and the branch's ahead/behind counts; the commits ahead
  (an exact count, or expected ids that must all be there, and no others if asked); a clean working
  tree; the diff stat against the merge base within bounds.
- remote, per host, through ONE agent session per host (ops.session.connect): optionally the
  checkout is at the local HEAD (``same_head``); each service's state + health check (the agent's
  ``status`` op, one call per host) and the last line of its log; each test command run by the
  agent's ``exec`` op in a directory of the checkout, judged by exit code AND the count read from
  its output (ops.testcount).

``plan()`` turns settings into a list of CheckSpec (pure, compared exactly in tests); ``Runner``
executes them in order and stops at the first failure unless ``keep_going``; checks it did not run
are reported as "skip" with the reason. Rendering is ops.report's job.

Exit codes: 0 all passed; 1 a check failed; 3 the only failures were unreachable hosts (or agent
errors), so CI can tell "red" from "could not look".
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ops import control, testcount
from ops.errors import OpsError, UsageError
from ops.gitinfo import (
    HOST_GIT_ENV,
    DiffStat,
    Git,
    GitError,
    host_state_script,
    is_commit_id,
    match_expected,
    match_files,
    parse_host_state,
    split_remote_ref,
)
from ops.inventory import Host, Inventory, PreflightTest, resolve_hosts
from ops.session import HostSession, connect

EXEC_MARGIN = 30.0  # s on top of a test's own timeout for the agent call
HEAD_TIMEOUT = 30.0
FETCH_TIMEOUT = 60.0  # s for `git fetch` of the base
OUTPUT_TAIL = 20  # lines of a failed test run's output kept for the report
OUTPUT_LINE = 500  # characters of each of those lines
MAX_LISTED = 5  # dirty files / unexpected commits named in a detail

PASS, FAIL, SKIP = "pass", "fail", "skip"


# --- settings: inventory + flags ----------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repo: str
    base: str
    commits: int | None = None
    expect: tuple[str, ...] = ()
    only_expected: bool = False
    clean: bool = True
    max_files: int | None = None
    max_insertions: int | None = None
    max_deletions: int | None = None
    same_head: bool = False
    health: tuple[str, ...] = ()  # host names
    tests: tuple[PreflightTest, ...] = ()
    fetch: bool = True
    min_files: int | None = None
    min_insertions: int | None = None
    min_deletions: int | None = None
    expect_files: tuple[str, ...] = ()
    body: str | None = None

    @property
    def hosts(self) -> list[str]:
        """The hosts the remote checks run on, in declaration order."""
        return list(dict.fromkeys([*self.health, *(t.host for t in self.tests)]))


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def settings(
    inv: Inventory,
    *,
    repo: str | None = None,
    base: str | None = None,
    commits: str | int | None = None,
    expect: str | None = None,
    host: str | None = None,
    cwd: str = ".",
    fetch: bool | None = None,
) -> Settings:
    """The inventory's [preflight] with the command-line flags applied.

    A commit expectation given by flag (--commits and/or --expect) replaces the inventory's whole
    commit expectation, so a flag never combines with a contradicting declared one.
    """
    cfg = inv.preflight
    base_ref = (base if base is not None else cfg.base).strip()
    if not base_ref:
        raise UsageError("--base must not be empty", "e.g. --base origin/main")
    want_commits, want_ids = cfg.commits, cfg.expect_commits
    if commits is not None or expect is not None:
        want_commits, want_ids = None, ()
        if commits is not None:
            try:
                want_commits = int(commits)
            except ValueError:
                raise UsageError(f"--commits must be a number, got {commits!r}") from None
            if want_commits < 0:
                raise UsageError(f"--commits must be 0 or more, got {want_commits}")
        if expect is not None:
            want_ids = tuple(_split(expect))
            bad = [x for x in want_ids if not is_commit_id(x)]
            if bad:
                raise UsageError(f"--expect: {bad[0]!r} is not a commit id", "give hex ids, 4 to 40 digits")
    health, tests = cfg.health, cfg.tests
    if host:
        chosen = {h.name for h in resolve_hosts(inv, host)}
        planned = list(dict.fromkeys([*health, *(t.host for t in tests)]))
        if not chosen & set(planned):
            raise UsageError(
                f"--host {host}: no pre-flight check runs there",
                f"the pre-flight hosts in {inv.path} are: {', '.join(planned) or '(none)'}",
            )
        health = tuple(h for h in health if h in chosen)
        tests = tuple(t for t in tests if t.host in chosen)
    return Settings(
        repo=repo or cfg.repo or cwd,
        base=base_ref,
        commits=want_commits,
        expect=tuple(want_ids),
        only_expected=cfg.only_expected,
        clean=cfg.clean,
        max_files=cfg.max_files,
        max_insertions=cfg.max_insertions,
        max_deletions=cfg.max_deletions,
        same_head=cfg.same_head,
        health=health,
        tests=tests,
        fetch=cfg.fetch if fetch is None else fetch,
        min_files=cfg.min_files,
        min_insertions=cfg.min_insertions,
        min_deletions=cfg.min_deletions,
        expect_files=cfg.expect_files,
        body=cfg.body,
    )


# --- the plan (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    name: str
    kind: str  # git.fetch | git.base | git.commits | git.clean | git.diff | git.files | head | health | tests
    host: str | None = None
    service: str | None = None
    test: PreflightTest | None = None


def label_of(t: PreflightTest) -> str:
    return t.name or t.cmd


def plan(s: Settings, inv: Inventory) -> list[CheckSpec]:
    """Local git checks first (cheap), then per host: checkout, health; then the test runs."""
    checks = [
        CheckSpec("git: fetch", "git.fetch"),
        CheckSpec("git: base", "git.base"),
        CheckSpec("git: commits", "git.commits"),
    ]
    if s.clean:
        checks.append(CheckSpec("git: clean", "git.clean"))
    checks.append(CheckSpec("git: diff", "git.diff"))
    if s.expect_files:
        checks.append(CheckSpec("git: files", "git.files"))
    if s.same_head:
        for h in s.hosts:
            checks.append(CheckSpec(f"{h}: checkout", "head", host=h))
    for h in s.health:
        for svc in inv.host(h).services:
            checks.append(CheckSpec(f"{h}: health {svc.name}", "health", host=h, service=svc.name))
    for t in s.tests:
        checks.append(CheckSpec(f"{t.host}: test {label_of(t)}", "tests", host=t.host, test=t))
    return checks


def describe(spec: CheckSpec, s: Settings, inv: Inventory) -> str:
    """What a planned check will verify, in words (for --dry-run)."""
    if spec.kind == "git.fetch":
        if not s.fetch:
            return f"--no-fetch: compare with the local {s.base} as it is; show when it was last updated"
        return f"fetch {s.base} from its remote first (a local branch or a commit id: nothing to fetch)"
    if spec.kind == "git.files":
        return f"the diff touches {', '.join(s.expect_files)} and nothing else; each glob at least once"
    if spec.kind == "git.base":
        return f"{s.base} names a commit in {s.repo}; report ahead/behind and the merge base"
    if spec.kind == "git.commits":
        wants = []
        if s.commits is not None:
            wants.append(f"exactly {s.commits} commits ahead")
        if s.expect:
            wants.append(
                f"contains {', '.join(s.expect)}" + (" and no other commit" if s.only_expected else "")
            )
        return "; ".join(wants) or "list the commits ahead (no expectation declared)"
    if spec.kind == "git.clean":
        return "no uncommitted or untracked files"
    if spec.kind == "git.diff":
        bounds = [f"{label} >= {lo}" for label, lo, _ in _bounds(s) if lo is not None]
        bounds += [f"{label} <= {hi}" for label, _, hi in _bounds(s) if hi is not None]
        return "diff stat from the merge base: " + (", ".join(bounds) or "report only (no bounds)")
    host = inv.host(spec.host or "")
    if spec.kind == "head":
        return f"{host.path} is at the local HEAD, with a clean tree (untracked files included)"
    if spec.kind == "health":
        svc = host.service(spec.service or "")
        what = f"health {svc.health.url}" if svc.health else "no health check declared"
        return f"{svc.name} running; {what}; last log line"
    t = spec.test
    assert t is not None
    if t.runner == "regex":
        want = f"/{t.expect_regex}/" + (f" with {t.expect_passed}" if t.expect_passed is not None else "")
        want = "exit 0" + (f" and {want}" if t.expect_regex else "")
    else:
        want = "exit 0" + (f" and exactly {t.expect_passed} passed" if t.expect_passed is not None else "")
    return f"in {t.cwd}: `{t.cmd}`: {want} (timeout {t.timeout:g}s)"


# --- results ------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    kind: str
    host: str | None
    status: str  # pass | fail | skip
    detail: str
    duration: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0  # for a failure: 1 (the check failed) or 3 (unreachable host / agent error)
    output: list[str] = field(default_factory=list)  # tail of a failed test run's output

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "status": self.status,
            "detail": self.detail,
            "duration": round(self.duration, 3),
            "facts": self.facts,
            "output": self.output,
        }


@dataclass
class PreflightReport:
    repo: str
    base: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.status == PASS for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        if self.ok:
            return 0
        codes = {c.exit_code or 1 for c in self.failures}
        return 1 if (1 in codes or not codes) else max(codes)

    def by_kind(self, kind: str) -> list[CheckResult]:
        return [c for c in self.checks if c.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "repo": self.repo,
            "base": self.base,
            "summary": {k: sum(c.status == k for c in self.checks) for k in (PASS, FAIL, SKIP)},
            "checks": [c.to_json() for c in self.checks],
        }


class Skip(Exception):
    """A check that cannot run because something it needs failed earlier."""


@dataclass
class Outcome:
    ok: bool
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)


# --- verdicts (pure) ----------------------------------------------------------------------------


def count_text(c: testcount.TestCounts) -> str:
    """'17/18 passed, 1 failed, 2 skipped': passed over tests that ran, then the rest."""
    parts = [f"{c.passed}/{c.ran} passed"]
    for label, n in (
        ("failed", c.failed),
        ("errors" if c.errors != 1 else "error", c.errors),
        ("skipped", c.skipped),
        ("deselected", c.deselected),
        ("xfailed", c.xfailed),
        ("xpassed", c.xpassed),
    ):
        if n:
            parts.append(f"{n} {label}")
    return ", ".join(parts)


def _tail(stdout: str, stderr: str, n: int = OUTPUT_TAIL) -> list[str]:
    """The last ``n`` lines of a run's output (already redacted and bounded by the agent), each cut
    at OUTPUT_LINE characters: one endless line must not become the report."""
    lines = stdout.rstrip("\n").splitlines()
    if stderr.strip():
        lines += ["--- stderr ---", *stderr.rstrip("\n").splitlines()]
    return [ln if len(ln) <= OUTPUT_LINE else ln[:OUTPUT_LINE] + " [...]" for ln in lines[-n:]]


def judge_test(t: PreflightTest, run: dict[str, Any]) -> Outcome:
    """A test run's verdict: exit code 0 AND the expected count, read from the output."""
    code, out, err = run.get("exit_code"), run.get("stdout", ""), run.get("stderr", "")
    facts: dict[str, Any] = {
        "exit_code": code,
        "expected": t.expect_passed,
        "remote_seconds": run.get("duration"),
    }
    if run.get("timed_out"):
        return Outcome(False, f"timed out after {t.timeout:g}s (killed)", facts, _tail(out, err))
    if t.runner == "regex":
        return _judge_regex(t, code, out, err, facts)
    counts = testcount.parse_pytest(out) or testcount.parse_pytest(f"{out}\n{err}")
    if counts is None:
        facts["result"] = f"exit {code}"
        if code == 0 and t.expect_passed is None:
            return Outcome(True, "exit 0 (no pytest summary line to read a count from)", facts)
        hint = "; run pytest with -q (not -qq) so it prints its summary line" if code in (0, 1) else ""
        return Outcome(
            False, f"exit {code}, no pytest summary line in the output{hint}", facts, _tail(out, err)
        )
    facts.update(
        passed=counts.passed,
        failed=counts.failed,
        errors=counts.errors,
        skipped=counts.skipped,
        deselected=counts.deselected,
        ran=counts.ran,
        summary=counts.summary,
    )
    text = "no tests ran" if counts.no_tests else count_text(counts)
    facts["result"] = text
    problems = []
    if code != 0:
        problems.append(f"exit {code}")
    if t.expect_passed is not None and counts.passed != t.expect_passed:
        problems.append(f"expected {t.expect_passed} passed")
    elif code == 0 and (counts.failed or counts.errors):
        problems.append("failures reported")
    if problems:
        return Outcome(False, f"{text}; {'; '.join(problems)}", facts, _tail(out, err))
    return Outcome(True, text, facts)


def _judge_regex(t: PreflightTest, code: Any, out: str, err: str, facts: dict[str, Any]) -> Outcome:
    m = testcount.parse_regex(f"{out}\n{err}", t.expect_regex) if t.expect_regex else None
    if m is not None:
        facts.update(matched=m.text, passed=m.count)
    if code != 0:
        facts["result"] = f"exit {code}"
        return Outcome(False, f"exit {code}", facts, _tail(out, err))
    if t.expect_regex is None:
        facts["result"] = "exit 0"
        return Outcome(True, "exit 0", facts)
    if m is None:
        facts["result"] = "no summary"
        return Outcome(False, f"exit 0, but /{t.expect_regex}/ is not in the output", facts, _tail(out, err))
    if t.expect_passed is not None:
        text = f"{m.count}/{t.expect_passed} passed" if m.count is not None else "no count"
        facts["result"] = text
        if m.count != t.expect_passed:
            return Outcome(
                False, f"{m.text!r}: {m.count} passed; expected {t.expect_passed}", facts, _tail(out, err)
            )
        return Outcome(True, f"{m.count}/{t.expect_passed} passed ({m.text})", facts)
    facts["result"] = f"exit 0, {m.text}"
    return Outcome(True, f"exit 0, {m.text}", facts)


def _bounds(s: Settings) -> list[tuple[str, int | None, int | None]]:
    return [
        ("files", s.min_files, s.max_files),
        ("insertions", s.min_insertions, s.max_insertions),
        ("deletions", s.min_deletions, s.max_deletions),
    ]


def judge_bounds(stat: DiffStat, s: Settings) -> list[str]:
    """The diff stat outside the declared bounds, minimums and maximums (empty: within). A minimum
    catches the empty or tiny diff of a branch that should carry work (a forgotten push, the wrong
    branch checked out)."""
    out = []
    values = {"files": stat.files, "insertions": stat.insertions, "deletions": stat.deletions}
    for label, lo, hi in _bounds(s):
        value = values[label]
        if lo is not None and value < lo:
            out.append(f"{value} {label} < min {lo}")
        if hi is not None and value > hi:
            out.append(f"{value} {label} > max {hi}")
    return out


def judge_files(globs: tuple[str, ...], paths: list[str]) -> Outcome:
    """The diff touches paths matching ``globs`` and only those, and every glob at least once."""
    stray, unused = match_files(globs, paths)
    facts: dict[str, Any] = {"files": paths, "expect_files": list(globs), "stray": stray, "unused": unused}
    problems = []
    if stray:
        problems.append(f"{len(stray)} unexpected {'path' if len(stray) == 1 else 'paths'}: {_listed(stray)}")
    if unused:
        problems.append(f"nothing touched matches {_listed(unused)}")
    if problems:
        return Outcome(False, "; ".join(problems), facts)
    n = len(paths)
    return Outcome(True, f"{n} {'path' if n == 1 else 'paths'} touched, all within {', '.join(globs)}", facts)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def age_text(seconds: float) -> str:
    """3725 -> '1h02m'; for a ref's age in a detail."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "-"


# --- the runner ---------------------------------------------------------------------------------

Connect = Callable[..., Any]


class Runner:
    """Runs a plan: local git through ``git``; remote checks through one session per host."""

    def __init__(
        self,
        inv: Inventory,
        s: Settings,
        git: Git | None = None,
        connect_fn: Connect = connect,
        workers: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inv = inv
        self.s = s
        self.git = git or Git(s.repo)
        self._connect = connect_fn
        self.workers = max(1, workers)  # hosts checked at once (1: one host after another)
        self._clock = clock
        self._stack: ExitStack | None = None
        self._lock = threading.Lock()
        self.top = s.repo
        self._base: dict[str, Any] | None = None
        self._base_error: str | None = None
        self._sessions: dict[str, HostSession] = {}
        self._unreachable: dict[str, str] = {}
        self._status: dict[str, dict[str, dict[str, Any]]] = {}

    def check_repo(self) -> str:
        top = self.git.toplevel()
        if top is None:
            raise UsageError(
                f"not a git checkout: {self.s.repo}",
                "run it from the branch's checkout, or pass --repo PATH (or set [preflight] repo)",
            )
        return top

    def run(
        self,
        checks: list[CheckSpec],
        keep_going: bool = False,
        on_start: Callable[[CheckSpec], None] | None = None,
        on_result: Callable[[CheckResult], None] | None = None,
    ) -> PreflightReport:
        """Local git checks in order, then every host's checks at once (each host's own in order,
        through its one session). Without ``keep_going`` a check is not started once a check
        declared BEFORE it has failed; the report is then settled in declaration order: the first
        failure is the one reported, and what ran alongside after it shows as not counted."""
        top = self.top = self.check_repo()
        results: list[CheckResult | None] = [None] * len(checks)
        first = [len(checks)]  # declaration index of the first failure so far

        def one(i: int) -> None:
            spec = checks[i]
            with self._lock:
                if not keep_going and first[0] < i:
                    return  # settled below as "not run"
                if on_start:
                    on_start(spec)
            r = self._one(spec)
            with self._lock:
                results[i] = r
                if r.status == FAIL:
                    first[0] = min(first[0], i)
                if on_result:
                    on_result(r)

        by_host: dict[str, list[int]] = {}
        for i, c in enumerate(checks):
            if c.host is not None:
                by_host.setdefault(c.host, []).append(i)
        with ExitStack() as stack:
            self._stack = stack
            for i, c in enumerate(checks):
                if c.host is None:
                    one(i)
            if self.workers == 1 or len(by_host) <= 1:
                for idx in by_host.values():
                    for i in idx:
                        one(i)
            elif by_host:
                with ThreadPoolExecutor(max_workers=min(self.workers, len(by_host))) as pool:
                    futures = [pool.submit(lambda idx=idx: [one(i) for i in idx]) for idx in by_host.values()]
                    for f in futures:
                        f.result()
            self._stack = None
        return PreflightReport(repo=top, base=self.s.base, checks=self._settle(checks, results, first[0],
                                                                                keep_going))

    @staticmethod
    def _settle(
        checks: list[CheckSpec], results: list[CheckResult | None], stop: int, keep_going: bool
    ) -> list[CheckResult]:
        out: list[CheckResult] = []
        for i, spec in enumerate(checks):
            r = results[i]
            if r is not None and (keep_going or i <= stop):
                out.append(r)
                continue
            why = f"stopped at '{checks[stop].name}' (--keep-going runs every check)"
            if r is None or r.status == SKIP:  # never started, or could not run (e.g. host unreachable)
                out.append(CheckResult(spec.name, spec.kind, spec.host, SKIP, f"not run: {why}"))
                continue
            # it ran on another host alongside the failing one: shown, but never counted
            facts = dict(r.facts, ran={"status": r.status, "detail": r.detail})
            out.append(
                CheckResult(
                    spec.name,
                    spec.kind,
                    spec.host,
                    SKIP,
                    f"not counted: {why}; it ran alongside: {r.status}: {r.detail}",
                    r.duration,
                    facts,
                    0,
                    r.output,
                )
            )
        return out

    def _one(self, spec: CheckSpec) -> CheckResult:
        t = time.monotonic()
        r = CheckResult(spec.name, spec.kind, spec.host, FAIL, "")
        try:
            out: Outcome = getattr(self, "_" + spec.kind.replace(".", "_"))(spec)
            r.status, r.detail, r.facts, r.output = (
                (PASS if out.ok else FAIL),
                out.detail,
                out.facts,
                out.output,
            )
            r.exit_code = 0 if out.ok else 1
        except Skip as exc:
            r.status, r.detail = SKIP, str(exc)
        except OpsError as exc:
            r.detail, r.exit_code = exc.message, exc.exit_code
            if exc.advice:
                r.facts["advice"] = exc.advice
        except Exception as exc:  # a bug must show as this check's failure, not hide the others
            r.detail, r.exit_code = f"unexpected {type(exc).__name__}: {exc} (a bug in the tool)", 1
        r.duration = time.monotonic() - t
        return r

    # --- git ----------------------------------------------------------------------------------

    def _base_facts(self) -> dict[str, Any]:
        if self._base is not None:
            return self._base
        if self._base_error is not None:
            raise Skip(f"not run: needs the base, which failed ({self._base_error})")
        try:
            head = self.git.resolve("HEAD")
            if head is None:
                raise GitError(f"{self.top} has no commit yet (HEAD resolves to nothing)")
            base_sha = self.git.resolve(self.s.base)
            if base_sha is None:
                raise GitError(
                    f"base '{self.s.base}' names no commit in {self.top}",
                    "fetch it first (e.g. `git fetch origin`), or pass --base REF",
                )
            merge_base = self.git.merge_base(base_sha, head)
            if merge_base is None:
                raise GitError(f"HEAD and '{self.s.base}' have no common ancestor")
            ahead, behind = self.git.ahead_behind(base_sha, head)
            branch = self.git.branch()
        except GitError as exc:
            self._base_error = exc.message
            raise
        self._base = {
            "branch": branch,
            "head": head,
            "base": self.s.base,
            "base_sha": base_sha,
            "merge_base": merge_base,
            "ahead": ahead,
            "behind": behind,
        }
        return self._base

    def base_remote(self) -> tuple[str, str] | None:
        """(remote, branch) when the base is a remote-tracking branch, else None."""
        return split_remote_ref(self.s.base, self.git.remotes())

    def _git_fetch(self, spec: CheckSpec) -> Outcome:
        rb = self.base_remote()
        if rb is None:
            return Outcome(
                True,
                f"{self.s.base} is not a remote-tracking branch (a local branch, tag or commit): "
                "nothing to fetch",
                {"fetched": False, "remote": None},
            )
        remote, branch = rb
        ref = f"refs/remotes/{remote}/{branch}"
        before = self.git.resolve(ref)
        facts: dict[str, Any] = {"remote": remote, "branch": branch, "before": before}
        if not self.s.fetch:
            when = self.git.last_sync(remote, branch)
            facts.update(fetched=False, updated_at=when)
            age = (
                f"last fetched {age_text(self._clock() - when)} ago"
                if when is not None
                else "never fetched (no reflog, no FETCH_HEAD)"
            )
            at = f" at {_short(before)}" if before else " (missing)"
            return Outcome(True, f"not fetched (--no-fetch): {self.s.base}{at}, {age}", facts)
        try:
            self.git.fetch(remote, branch, FETCH_TIMEOUT)
        except GitError as exc:
            when = self.git.last_sync(remote, branch)
            age = f" (last fetched {age_text(self._clock() - when)} ago)" if when is not None else ""
            if "couldn't find remote ref" in exc.message:
                raise GitError(
                    f"{remote} has no branch {branch} (the base {self.s.base})",
                    "check the name (--base, or [preflight] base); was the branch deleted or renamed?",
                ) from None
            raise GitError(
                f"cannot fetch {branch} from {remote}: {exc.message}",
                "check the remote is reachable, or pass --no-fetch to compare with the local "
                f"{self.s.base}{age}",
            ) from None
        after = self.git.resolve(ref)
        facts.update(fetched=True, after=after)
        moved = "unchanged" if before == after else f"was {_short(before)}"
        text = f"fetched {branch} from {remote}: {self.s.base} at {_short(after)} ({moved})"
        return Outcome(True, text, facts)

    def _git_base(self, spec: CheckSpec) -> Outcome:
        f = self._base_facts()
        where = f"branch {f['branch']}" if f["branch"] else "detached HEAD"
        return Outcome(
            True,
            f"{where} at {_short(f['head'])}: {f['ahead']} ahead, {f['behind']} behind {self.s.base} "
            f"(merge base {_short(f['merge_base'])})",
            dict(f),
        )

    def _git_commits(self, spec: CheckSpec) -> Outcome:
        f = self._base_facts()
        commits = self.git.commits(f["base_sha"], f["head"])
        facts: dict[str, Any] = {
            "commits": [{"id": c.short, "sha": c.sha, "subject": c.subject} for c in commits],
            "ahead": len(commits),
            "expected_count": self.s.commits,
            "expected_ids": list(self.s.expect),
        }
        n = len(commits)
        noun = "commit" if n == 1 else "commits"
        problems: list[str] = []
        if self.s.commits is not None and n != self.s.commits:
            problems.append(f"{n} {noun} ahead of {self.s.base}, expected exactly {self.s.commits}")
        if self.s.expect:
            m = match_expected(self.s.expect, commits)
            facts["missing"] = list(m.missing)
            facts["unexpected"] = [c.short for c in m.unexpected]
            for wanted in m.missing:
                where = (
                    f"exists, but is not between {self.s.base} and HEAD"
                    if self.git.exists(wanted)
                    else "unknown to this repository"
                )
                problems.append(f"expected commit {wanted} is missing ({where})")
            for wanted, hits in m.ambiguous:
                problems.append(f"expected id {wanted} is ambiguous: {', '.join(c.short for c in hits)}")
            if self.s.only_expected and m.unexpected:
                listed = ", ".join(f"{c.short} {c.subject!r}" for c in m.unexpected[:MAX_LISTED])
                more = f" and {len(m.unexpected) - MAX_LISTED} more" if len(m.unexpected) > MAX_LISTED else ""
                problems.append(
                    f"unexpected {'commit' if len(m.unexpected) == 1 else 'commits'}: {listed}{more}"
                )
        if problems:
            return Outcome(False, "; ".join(problems), facts)
        if self.s.expect:
            extra = " and no others" if self.s.only_expected else ""
            return Outcome(True, f"{n} {noun} ahead: all {len(self.s.expect)} expected present{extra}", facts)
        if self.s.commits is not None:
            return Outcome(True, f"{n} {noun} ahead of {self.s.base}, as expected", facts)
        return Outcome(True, f"{n} {noun} ahead of {self.s.base} (no expectation declared)", facts)

    def _git_clean(self, spec: CheckSpec) -> Outcome:
        dirty = self.git.status()
        facts = {"dirty": dirty}
        if not dirty:
            return Outcome(True, "working tree clean", facts)
        listed = ", ".join(dirty[:MAX_LISTED]) + (
            f" and {len(dirty) - MAX_LISTED} more" if len(dirty) > MAX_LISTED else ""
        )
        noun = "change" if len(dirty) == 1 else "changes"
        return Outcome(False, f"{len(dirty)} uncommitted {noun}: {listed}", facts)

    def _git_diff(self, spec: CheckSpec) -> Outcome:
        f = self._base_facts()
        stat = self.git.shortstat(f["merge_base"], f["head"])
        facts = {
            "files": stat.files,
            "insertions": stat.insertions,
            "deletions": stat.deletions,
            "merge_base": f["merge_base"],
            "bounds": {
                "files": self.s.max_files,
                "insertions": self.s.max_insertions,
                "deletions": self.s.max_deletions,
            },
        }
        facts["min"] = {"files": self.s.min_files, "insertions": self.s.min_insertions,
                        "deletions": self.s.min_deletions}
        over = judge_bounds(stat, self.s)
        if over:
            return Outcome(False, f"{stat.text}: {'; '.join(over)}", facts)
        return Outcome(True, stat.text, facts)

    def _git_files(self, spec: CheckSpec) -> Outcome:
        f = self._base_facts()
        return judge_files(self.s.expect_files, self.git.changed_files(f["merge_base"], f["head"]))

    # --- remote -------------------------------------------------------------------------------

    def _session(self, name: str) -> HostSession:
        if name in self._sessions:
            return self._sessions[name]
        if name in self._unreachable:
            raise Skip(f"not run: {name} is unreachable ({self._unreachable[name]})")
        assert self._stack is not None
        try:
            cm = self._connect(self.inv, self.inv.host(name))
            session = cm.__enter__()
        except OpsError as exc:
            self._unreachable[name] = exc.message
            raise
        with self._lock:  # the hosts' threads share the stack that closes every session
            self._stack.push(cm.__exit__)
        self._sessions[name] = session
        return session

    def _exec_args(self, host: Host, **args: Any) -> dict[str, Any]:
        """An exec request whose output the agent redacts with the host's service secrets."""
        return {"base": host.path, "all_services": [svc.to_agent() for svc in host.services], **args}

    def _head(self, spec: CheckSpec) -> Outcome:
        """Same head: the host's checkout is at the local HEAD AND its tree is clean (untracked files
        included), so the remote checks run this branch's committed code and nothing else."""
        host = self.inv.host(spec.host or "")
        local = self.git.resolve("HEAD")
        data = self._session(host.name).call(
            "exec",
            self._exec_args(
                host, cmd=host_state_script(), cwd=host.path, env=HOST_GIT_ENV, timeout=HEAD_TIMEOUT
            ),
            timeout=HEAD_TIMEOUT + EXEC_MARGIN,
        )
        remote, dirty, caches = parse_host_state(data["stdout"]) if data["exit_code"] == 0 else (None, [], [])
        facts = {"remote_head": remote, "local_head": local, "path": host.path, "dirty": dirty,
                 "ignored_caches": len(caches)}
        if remote is None:
            why = (data["stderr"].strip().splitlines() or ["no output"])[-1]
            return Outcome(False, f"cannot read the checkout's HEAD and status in {host.path}: {why}", facts)
        problems = []
        if remote != local:
            problems.append(
                f"the checkout {host.path} is at {_short(remote)}, this branch is at {_short(local)}"
            )
        if dirty:
            noun = "change" if len(dirty) == 1 else "changes"
            problems.append(
                ("the checkout " + host.path if remote == local else "and it")
                + f" has {len(dirty)} uncommitted {noun}: {_listed(dirty)}"
            )
        if problems:
            advice = "deploy the branch first" if remote != local else (
                "the remote checks would run uncommitted code: commit or discard the changes on the host "
                f"(`git -C {host.path} status`), then deploy the branch"
            )
            return Outcome(False, "; ".join(problems) + f": {advice}", facts)
        extra = f" ({len(caches)} untracked bytecode caches ignored)" if caches else ""
        return Outcome(True, f"{host.path} is at {_short(remote)}, the local HEAD; tree clean{extra}", facts)

    def _health(self, spec: CheckSpec) -> Outcome:
        host = self.inv.host(spec.host or "")
        session = self._session(host.name)
        if host.name not in self._status:
            rows = control.status(session, health=True)
            self._status[host.name] = {r["name"]: r for r in rows}
        st = self._status[host.name][spec.service or ""]
        svc = host.service(spec.service or "")
        log = control.logs(session, svc, 1)
        last = log["lines"][-1] if log.get("exists") and log.get("lines") else None
        h = st.get("health")
        facts = {
            "service": svc.name,
            "state": st["state"],
            "pid": st.get("pid"),
            "health": h,
            "last_line": last,
            "log": log.get("path"),
        }
        tail = f"; last log: {last}" if last is not None else "; no log yet"
        if st["state"] != "running":
            why = f" ({st['detail']})" if st.get("detail") else ""
            facts["result"] = st["state"]
            return Outcome(False, f"{svc.name} is {st['state']}{why}{tail}", facts)
        if h is not None and not h["ok"]:
            facts["result"] = f"unhealthy: {h['detail']}"
            return Outcome(False, f"unhealthy: {h['detail']}{tail}", facts)
        result = f"healthy: {h['detail']}" if h is not None else "running (no health check declared)"
        facts["result"] = result
        return Outcome(True, f"{result}, pid {st.get('pid')}{tail}", facts)

    def _tests(self, spec: CheckSpec) -> Outcome:
        t = spec.test
        assert t is not None
        host = self.inv.host(t.host)
        cwd = host.path if t.cwd in ("", ".") else posixpath.join(host.path, t.cwd)
        session = self._session(host.name)
        save = posixpath.join(host.state_dir, "preflight", _slug(spec.name) + ".out")
        data = session.call(
            "exec",
            self._exec_args(host, cmd=t.cmd, cwd=cwd, timeout=t.timeout, save=save),
            timeout=t.timeout + EXEC_MARGIN,
        )
        out = judge_test(t, data)
        out.facts.update(cmd=t.cmd, cwd=t.cwd, name=t.name, saved=data.get("saved"),
                         output_bytes=(data.get("stdout_bytes") or 0) + (data.get("stderr_bytes") or 0))
        if data.get("lingering"):
            out.facts["lingering"] = True
            out.detail += (
                "; a background process of the run still held its output after it exited: "
                "its group was killed"
            )
        return out


def _slug(name: str) -> str:
    """A check's name as a file name: 'box: test pytest -q' -> 'box-test-pytest-q'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "test"


def run(
    inv: Inventory,
    s: Settings,
    keep_going: bool = False,
    on_start: Callable[[CheckSpec], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> PreflightReport:
    """Plan and run the pre-flight checks; the report says what passed, failed and was not run."""
    return Runner(inv, s).run(plan(s, inv), keep_going=keep_going, on_start=on_start, on_result=on_result)
