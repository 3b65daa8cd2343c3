"""`inv pr`: run the pre-flight, and only if every check passed, open the pull request with `gh`.

The body is built from what the tool already holds (gathered here, rendered by ops.report, both
compared exactly in tests):

- **Summary**: the commits ahead of the base, oldest first (from the pre-flight's `git: commits`);
- **Verification**: the pre-flight's markdown section (ops.report.preflight_markdown_text);
- **Rollback**: per host of the remote checks, from its deploy record (`state_dir/deploy.json`, one
  `deploy_probe` round trip per host, hosts in parallel): the commit deployed before this branch and
  the exact `inv rollback` command that goes back to it.

A template (``[preflight] body = "docs/pr-template.md"``, relative to the checked repository) places
them with ``{{summary}}``, ``{{verification}}`` and ``{{rollback}}`` (also ``{{title}}``,
``{{branch}}``, ``{{base}}``); it must place ``{{verification}}``.

The PR is opened with ``gh pr create --base BASE --head BRANCH --title TITLE --body-file FILE
[--draft]``: the body travels in a file, never in argv. Before that the body is written to a file in
the repository's git directory (never the work tree: the next pre-flight would see it as an
untracked file), so when `gh` is missing, not authenticated, or the branch is not pushed, the user is
told so and can paste it. A red pre-flight writes no body at all.

The base may be another branch (a stacked PR on its parent's branch, ``--base origin/parent``):
the checks use it, and `gh` gets the branch name without the remote.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops import preflight as pf
from ops.errors import UsageError
from ops.gitinfo import Git, GitError, split_remote_ref
from ops.inventory import Inventory

GH_TIMEOUT = 120.0  # s for `gh pr create` (it talks to the forge)
GH_AUTH_TIMEOUT = 30.0
LS_REMOTE_TIMEOUT = 60.0
BODY_NAME = "ops-pr-body.md"
PLACEHOLDERS = ("summary", "verification", "rollback", "title", "branch", "base")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")


# --- pure: argv, title, rollback facts, template check ------------------------------------------


def gh_base(base: str, remotes: Sequence[str]) -> str:
    """The branch name `gh` wants: 'origin/parent' -> 'parent'; a local branch stays as it is."""
    rb = split_remote_ref(base, remotes)
    return rb[1] if rb else base


def gh_argv(gh: str, base: str, head: str, title: str, body_file: str, draft: bool) -> list[str]:
    argv = [gh, "pr", "create", "--base", base, "--head", head, "--title", title, "--body-file", body_file]
    return argv + (["--draft"] if draft else [])


def default_title(commits: Sequence[Mapping[str, str]], branch: str) -> str:
    """One commit: its subject. Several: the branch name, words separated by spaces."""
    if len(commits) == 1:
        return commits[0]["subject"]
    return re.sub(r"[-_/]+", " ", branch).strip() or branch


def rollback_command(host: str, inventory_path: str, cwd: str) -> str:
    """The exact command, with the inventory named when it is not ./hosts.toml."""
    default = os.path.abspath(os.path.join(cwd, "hosts.toml"))
    same = os.path.abspath(inventory_path) == default
    env = "" if same else f"OPS_INVENTORY={shlex.quote(inventory_path)} "
    return f"{env}inv rollback --host {shlex.quote(host)}"


def rollback_fact(
    host: str, probe: Mapping[str, Any] | None, error: str | None, head: str, cmd: str
) -> dict[str, Any]:
    """What a host's deploy record (deploy_probe's answer) says about rolling this branch back:
    ``state`` is "deployed" (over ``previous``: ``command`` goes back to it), "first" (no earlier
    deploy recorded), "other" (the last deploy there is not this branch), "none" (no deploy
    recorded) or "error" (the record could not be read). ops.report renders it."""
    fact: dict[str, Any] = {"host": host, "head": head, "command": cmd, "error": error}
    if error is not None or probe is None:
        return {**fact, "state": "error", "error": error or "no answer"}
    record = probe.get("record") or {}
    current, previous = record.get("current"), record.get("previous")
    fact.update(current=current, previous=previous, checkout=(probe.get("checkout") or {}).get("head"))
    if not current:
        return {**fact, "state": "none"}
    if current != head:
        return {**fact, "state": "other"}
    return {**fact, "state": "deployed" if previous else "first"}


def check_template(template: str, name: str) -> None:
    """A body template must place {{verification}} and use only the known placeholders."""
    where = f"[preflight] body ({name})"
    names = PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise UsageError(
            f"{where}: unknown placeholder {{{{{unknown[0]}}}}}",
            "the placeholders are " + ", ".join(f"{{{{{p}}}}}" for p in PLACEHOLDERS),
        )
    if "verification" not in names:
        raise UsageError(
            f"{where} does not place {{{{verification}}}}",
            "add {{verification}} where the pre-flight's evidence goes: a PR body always carries it",
        )


# --- the run -------------------------------------------------------------------------------------


@dataclass
class PrOutcome:
    report: pf.PreflightReport
    opened: bool = False
    url: str | None = None
    body_file: str | None = None
    argv: list[str] = field(default_factory=list)
    problem: str | None = None  # why the PR was not opened (the body, if written, is to paste)
    advice: str | None = None

    @property
    def exit_code(self) -> int:
        if not self.report.ok:
            return self.report.exit_code
        return 0 if self.opened else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "url": self.url,
            "body_file": self.body_file,
            "argv": self.argv,
            "problem": self.problem,
            "advice": self.advice,
            "exit_code": self.exit_code,
            "preflight": self.report.to_json(),
        }


Run = Callable[..., "subprocess.CompletedProcess[str]"]
Probe = Callable[[Inventory, list[str]], dict[str, tuple[dict[str, Any] | None, str | None]]]


def probe_hosts(inv: Inventory, names: list[str]) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """Each host's deploy record (one deploy_probe round trip, hosts in parallel): (probe, error)."""
    from ops.session import on_hosts

    outcomes = on_hosts(
        inv, [inv.host(n) for n in names], lambda s: s.call("deploy_probe", {"host": s.host_args()})
    )
    return {o.host: (o.value, o.error.message if o.error else None) for o in outcomes}


@dataclass(frozen=True)
class PrOptions:
    title: str | None = None
    draft: bool = False
    body_file: str | None = None  # where to write the body (default: in the git directory)
    cwd: str = "."  # for the rollback command's inventory path


class PrRunner:
    def __init__(
        self,
        inv: Inventory,
        s: pf.Settings,
        opts: PrOptions,
        git: Git | None = None,
        run: Run = subprocess.run,
        env: Mapping[str, str] | None = None,
        probe: Probe = probe_hosts,
        preflight_runner: pf.Runner | None = None,
    ) -> None:
        self.inv, self.s, self.opts = inv, s, opts
        self.git = git or Git(s.repo)
        self._run = run
        self.env = dict(os.environ if env is None else env)
        self._probe = probe
        self.preflight = preflight_runner or pf.Runner(inv, s, git=self.git)

    def run(self, on_start: Any = None, on_result: Any = None) -> PrOutcome:
        report = self.preflight.run(pf.plan(self.s, self.inv), on_start=on_start, on_result=on_result)
        out = PrOutcome(report)
        if not report.ok:
            out.problem = "pre-flight failed: no PR opened and no body written"
            return out
        base_facts = report.by_kind("git.base")[0].facts
        branch, head = base_facts.get("branch"), base_facts["head"]
        if not branch:
            raise UsageError(
                "HEAD is detached: a PR needs a branch", "check out the branch to open the PR for"
            )
        remotes = self.git.remotes()
        base = gh_base(self.s.base, remotes)
        commits = report.by_kind("git.commits")[0].facts.get("commits", [])
        title = self.opts.title or default_title(commits, branch)
        body = self.body(report, branch, base, head, title, commits)
        out.body_file = self.write_body(body)
        gh = shutil.which("gh", path=self.env.get("PATH"))
        argv = gh_argv(gh or "gh", base, branch, title, out.body_file, self.opts.draft)
        out.argv = argv
        if gh is None:
            out.problem = (
                f"`gh` is not installed (not on PATH): the PR was not opened; its body is in {out.body_file}"
            )
            out.advice = (
                "install the GitHub CLI and `gh auth login`, or open the PR by hand and paste the body"
            )
            return out
        auth = self._gh([gh, "auth", "status"], GH_AUTH_TIMEOUT)
        if auth.returncode != 0:
            why = _last_line(auth.stderr) or _last_line(auth.stdout) or f"exit {auth.returncode}"
            out.problem = (
                f"`gh` is not authenticated ({why}): the PR was not opened; its body is in {out.body_file}"
            )
            out.advice = "run `gh auth login`, then `inv pr` again; or open the PR by hand and paste the body"
            return out
        pushed = self.pushed(branch, head, remotes)
        if pushed is not None:
            out.problem = f"{pushed}: the PR was not opened; its body is in {out.body_file}"
            out.advice = "push the branch, then run `inv pr` again"
            return out
        p = self._gh(argv, GH_TIMEOUT)
        if p.returncode != 0:
            why = _last_line(p.stderr) or _last_line(p.stdout) or f"exit {p.returncode}"
            out.problem = f"`gh pr create` failed: {why}; the body is in {out.body_file}"
            out.advice = (
                "fix what gh says (an existing PR for the branch?), or open it by hand and paste the body"
            )
            return out
        urls = [w for w in p.stdout.split() if w.startswith(("https://", "http://"))]
        out.opened, out.url = True, (urls[-1] if urls else _last_line(p.stdout))
        return out

    def planned_argv(self) -> list[str]:
        """The gh command a green run would end with (for --dry-run: local reads only)."""
        branch = self.git.branch() or "BRANCH"
        base = gh_base(self.s.base, self.git.remotes())
        body = self.opts.body_file or f"$(git rev-parse --git-path {BODY_NAME})"
        title = self.opts.title or "(the commit's subject, or the branch name)"
        gh = shutil.which("gh", path=self.env.get("PATH")) or "gh"
        return gh_argv(gh, base, branch, title, body, self.opts.draft)

    def body(
        self,
        report: pf.PreflightReport,
        branch: str,
        base: str,
        head: str,
        title: str,
        commits: list[dict[str, str]],
    ) -> str:
        from ops import report as render

        hosts = self.s.hosts
        probes = self._probe(self.inv, hosts) if hosts else {}
        facts = [
            rollback_fact(h, *probes.get(h, (None, "not probed")), head,
                          rollback_command(h, self.inv.path, self.opts.cwd))
            for h in hosts
        ]
        values = {
            "summary": render.pr_summary_text(commits),
            "verification": render.preflight_markdown_text(report),
            "rollback": render.pr_rollback_text(facts),
            "title": title,
            "branch": branch,
            "base": base,
        }
        template, name = self.template()
        if template is not None:
            check_template(template, name)
        return render.pr_body_text(template, values)

    def template(self) -> tuple[str | None, str]:
        if not self.s.body:
            return None, ""
        path = Path(self.preflight.top) / self.s.body
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise UsageError(
                f"{self.inv.path}: [preflight] body = {self.s.body!r}: cannot read {path}: "
                f"{exc.strerror or exc}",
                "the template's path is relative to the checked repository; fix it or remove the key",
            ) from None

    def write_body(self, body: str) -> str:
        if self.opts.body_file:
            path = Path(self.opts.body_file)
        else:
            rel = self.git.out(["rev-parse", "--git-path", BODY_NAME]).strip()
            path = Path(rel) if os.path.isabs(rel) else Path(self.preflight.top) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        return str(path)

    def pushed(self, branch: str, head: str, remotes: list[str]) -> str | None:
        """None when the base's remote (else origin) has the branch at HEAD; else what is wrong."""
        rb = split_remote_ref(self.s.base, remotes)
        remote = rb[0] if rb else ("origin" if "origin" in remotes else None)
        if remote is None:
            return None  # no remote to compare with: gh will say if the branch is missing
        try:
            there = self.git.ls_remote(remote, branch, LS_REMOTE_TIMEOUT)
        except GitError as exc:
            return f"cannot check that {branch} is pushed to {remote}: {exc.message}"
        if there is None:
            return f"{branch} is not on {remote} (git push -u {remote} {branch})"
        if there != head:
            return (
                f"{remote} has {branch} at {there[:7]}, the local HEAD is {head[:7]} "
                f"(git push {remote} {branch})"
            )
        return None

    def _gh(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, GH_PROMPT_DISABLED="1", NO_COLOR="1", GH_NO_UPDATE_NOTIFIER="1")
        try:
            return self._run(
                argv,
                cwd=self.preflight.top,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                argv, 124, "", f"`{' '.join(argv[:3])}` took longer than {timeout:g}s"
            )
        except OSError as exc:
            return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
