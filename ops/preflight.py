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
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ops import control, testcount
from ops.errors import OpsError, UsageError
from ops.gitinfo import DiffStat, Git, GitError, is_commit_id, match_expected
from ops.inventory import Inventory, PreflightTest, resolve_hosts
from ops.session import HostSession, connect

EXEC_MARGIN = 30.0  # s on top of a test's own timeout for the agent call
HEAD_TIMEOUT = 30.0
OUTPUT_TAIL = 20  # lines of a failed test run's output kept for the report
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
    )


# --- the plan (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    name: str
    kind: str  # git.base | git.commits | git.clean | git.diff | head | health | tests
    host: str | None = None
    service: str | None = None
    test: PreflightTest | None = None


def label_of(t: PreflightTest) -> str:
    return t.name or t.cmd


def plan(s: Settings, inv: Inventory) -> list[CheckSpec]:
    """Local git checks first (cheap), then per host: checkout, health; then the test runs."""
    checks = [CheckSpec("git: base", "git.base"), CheckSpec("git: commits", "git.commits")]
    if s.clean:
        checks.append(CheckSpec("git: clean", "git.clean"))
    checks.append(CheckSpec("git: diff", "git.diff"))
    if s.same_head:
        for h in dict.fromkeys([*s.health, *(t.host for t in s.tests)]):
            checks.append(CheckSpec(f"{h}: checkout", "head", host=h))
    for h in s.health:
        for svc in inv.host(h).services:
            checks.append(CheckSpec(f"{h}: health {svc.name}", "health", host=h, service=svc.name))
    for t in s.tests:
        checks.append(CheckSpec(f"{t.host}: test {label_of(t)}", "tests", host=t.host, test=t))
    return checks


def describe(spec: CheckSpec, s: Settings, inv: Inventory) -> str:
    """What a planned check will verify, in words (for --dry-run)."""
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
        bounds = [
            f"{label} <= {b}"
            for label, b in (
                ("files", s.max_files),
                ("insertions", s.max_insertions),
                ("deletions", s.max_deletions),
            )
            if b is not None
        ]
        return "diff stat from the merge base: " + (", ".join(bounds) or "report only (no bounds)")
    host = inv.host(spec.host or "")
    if spec.kind == "head":
        return f"{host.path} is at the local HEAD"
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
    lines = stdout.rstrip("\n").splitlines()
    if stderr.strip():
        lines += ["--- stderr ---", *stderr.rstrip("\n").splitlines()]
    return lines[-n:]


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


def judge_bounds(stat: DiffStat, s: Settings) -> list[str]:
    """The diff stat's excesses over the declared bounds (empty: within)."""
    out = []
    for label, value, bound in (
        ("files", stat.files, s.max_files),
        ("insertions", stat.insertions, s.max_insertions),
        ("deletions", stat.deletions, s.max_deletions),
    ):
        if bound is not None and value > bound:
            out.append(f"{value} {label} > max {bound}")
    return out


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "-"


# --- the runner ---------------------------------------------------------------------------------

Connect = Callable[..., Any]


class Runner:
    """Runs a plan: local git through ``git``; remote checks through one session per host."""

    def __init__(
        self, inv: Inventory, s: Settings, git: Git | None = None, connect_fn: Connect = connect
    ) -> None:
        self.inv = inv
        self.s = s
        self.git = git or Git(s.repo)
        self._connect = connect_fn
        self._stack: ExitStack | None = None
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
        top = self.top = self.check_repo()
        results: list[CheckResult] = []
        stopped: CheckResult | None = None
        with ExitStack() as stack:
            self._stack = stack
            for spec in checks:
                if stopped is not None:
                    results.append(
                        CheckResult(
                            spec.name,
                            spec.kind,
                            spec.host,
                            SKIP,
                            f"not run: stopped at '{stopped.name}' (--keep-going runs every check)",
                        )
                    )
                    continue
                if on_start:
                    on_start(spec)
                r = self._one(spec)
                results.append(r)
                if on_result:
                    on_result(r)
                if r.status == FAIL and not keep_going:
                    stopped = r
            self._stack = None
        return PreflightReport(repo=top, base=self.s.base, checks=results)

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
        over = judge_bounds(stat, self.s)
        if over:
            return Outcome(False, f"{stat.text}: {'; '.join(over)}", facts)
        return Outcome(True, stat.text, facts)

    # --- remote -------------------------------------------------------------------------------

    def _session(self, name: str) -> HostSession:
        if name in self._sessions:
            return self._sessions[name]
        if name in self._unreachable:
            raise Skip(f"not run: {name} is unreachable ({self._unreachable[name]})")
        assert self._stack is not None
        try:
            session = self._stack.enter_context(self._connect(self.inv, self.inv.host(name)))
        except OpsError as exc:
            self._unreachable[name] = exc.message
            raise
        self._sessions[name] = session
        return session

    def _head(self, spec: CheckSpec) -> Outcome:
        host = self.inv.host(spec.host or "")
        local = self.git.resolve("HEAD")
        data = self._session(host.name).call(
            "exec",
            {"cmd": ["git", "rev-parse", "HEAD"], "cwd": host.path, "timeout": HEAD_TIMEOUT},
            timeout=HEAD_TIMEOUT + EXEC_MARGIN,
        )
        remote = data["stdout"].strip()
        facts = {"remote_head": remote or None, "local_head": local, "path": host.path}
        if data["exit_code"] != 0 or not remote:
            why = (data["stderr"].strip().splitlines() or ["no output"])[-1]
            return Outcome(False, f"cannot read the checkout's HEAD in {host.path}: {why}", facts)
        if remote != local:
            return Outcome(
                False,
                f"the checkout {host.path} is at {_short(remote)}, this branch is at {_short(local)}: "
                "deploy the branch first",
                facts,
            )
        return Outcome(True, f"{host.path} is at {_short(remote)}, the local HEAD", facts)

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
        data = session.call(
            "exec", {"cmd": t.cmd, "cwd": cwd, "timeout": t.timeout}, timeout=t.timeout + EXEC_MARGIN
        )
        out = judge_test(t, data)
        out.facts.update(cmd=t.cmd, cwd=t.cwd, name=t.name)
        return out


def run(
    inv: Inventory,
    s: Settings,
    keep_going: bool = False,
    on_start: Callable[[CheckSpec], None] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> PreflightReport:
    """Plan and run the pre-flight checks; the report says what passed, failed and was not run."""
    return Runner(inv, s).run(plan(s, inv), keep_going=keep_going, on_start=on_start, on_result=on_result)
