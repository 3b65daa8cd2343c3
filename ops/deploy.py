"""`deploy`: lock, deliver code, purge caches, ordered stop/start, verify, roll back, journal.

Per host the steps are a handful of agent calls (one round trip each): probe, lock, deliver
(+purge), stop, start, verify, record + journal + unlock. Code is delivered by git:
- ``push``: a git bundle of the target commit (incremental over what the host has) travels through
  the agent channel itself and is fetched into the checkout. No second SSH login, no third-party
  remote, and the `local` host goes through exactly the same path.
- ``pull``: the branch is pushed to its remote first (once per run), then the host fetches and
  fast-forwards only.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ops import control
from ops.errors import Interrupted, LockHeld, OpsError, TransportError, UsageError
from ops.gitinfo import Git
from ops.inventory import Host, Inventory
from ops.session import HostSession, connect

EXIT_ROLLED_BACK = 5


# --- local git (pure argv builders + a thin runner) ---------------------------------------------


GIT_TIMEOUT = 300.0  # s for one local git run (a push or a bundle of a large repository)


def git(repo: str, *args: str, check: bool = True) -> str:
    """stdout of one local git run, through gitinfo's runner (C locale, never prompting, bounded by
    GIT_TIMEOUT, a missing git named); a GitError (ActionFailed) if it fails and ``check``."""
    _, out = Git(repo, timeout=GIT_TIMEOUT).run(args, ok_codes=(0,) if check else None)
    return out.rstrip()  # porcelain lines start with a space


@dataclass(frozen=True)
class Source:
    """What is being deployed: a commit of the local repository."""

    repo: str
    commit: str
    branch: str | None
    subject: str
    dirty: tuple[str, ...] = ()


def local_source(repo: str = ".", ref: str = "HEAD", allow_dirty: bool = False) -> Source:
    top = Git(repo, timeout=GIT_TIMEOUT).toplevel()
    if top is None:
        raise UsageError(f"{os.path.abspath(repo)} is not a git repository",
                         "run deploy from the repository you want to deploy")
    commit = Git(top, timeout=GIT_TIMEOUT).resolve(ref)
    if commit is None:
        raise UsageError(f"unknown commit '{ref}' in {top}", "pass --ref with a commit, branch or tag")
    branch = git(top, "symbolic-ref", "-q", "--short", "HEAD", check=False) or None
    # One rule with preflight's `git: clean`: untracked files count (a new module left out of the
    # commit works here and is missing on the host); files ignored by .gitignore do not.
    dirty = tuple(git(top, "status", "--porcelain", "--untracked-files=normal").splitlines())
    if dirty and not allow_dirty:
        untracked = sum(d.startswith("??") for d in dirty)
        raise UsageError(
            f"the working tree of {top} has uncommitted changes ({len(dirty)} file(s)"
            + (f", {untracked} untracked" if untracked else "")
            + f": {', '.join(d[3:] for d in dirty[:3])})",
            "commit or stash them (a deploy ships commits, not your working tree; an untracked file "
            "would be missing on the host), add them to .gitignore, or pass --allow-dirty to deploy "
            "HEAD anyway",
        )
    subject = git(top, "log", "-1", "--format=%s", commit)
    return Source(repo=top, commit=commit, branch=branch, subject=subject, dirty=dirty)


def make_bundle(repo: str, commit: str, basis: str | None, path: str) -> None:
    """Write a git bundle holding `commit` as refs/ops/deploy to `path`, thin over `basis` (an
    ancestor of commit that the host has). Not thread-safe on one repo: go through Bundles."""
    git(repo, "update-ref", "refs/ops/deploy", commit)
    try:
        refs = ["refs/ops/deploy"] + ([f"^{basis}"] if basis else [])
        git(repo, "bundle", "create", "-q", path, *refs)
    finally:
        git(repo, "update-ref", "-d", "refs/ops/deploy", check=False)


class Bundles:
    """Bundles for one deploy run, shared by the host threads: one `git bundle` per distinct basis
    (thirty hosts at the same commit cost one), and never two git runs on the ref at once. Bundles
    are files (streamed to the hosts in chunks, never loaded whole); close() removes them."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._made: dict[tuple[str, str | None], str] = {}
        self._has: dict[str, bool] = {}
        self._dir: str | None = None
        self._closed = False
        self._ahead: list[threading.Thread] = []

    def has(self, commit: str) -> bool:
        """The local repository has this commit (so a bundle of it can be made)."""
        if commit not in self._has:
            code, _ = Git(self.repo, timeout=GIT_TIMEOUT).run(["cat-file", "-e", f"{commit}^{{commit}}"],
                                                              ok_codes=None)
            self._has[commit] = code == 0
        return self._has[commit]

    def path(self, commit: str, basis: str | None) -> str:
        key = (commit, basis if basis and basis != commit and _is_ancestor(self.repo, basis, commit)
               else None)
        with self._lock:
            if self._closed:
                raise OpsError("the deploy's bundles were already removed", "this is a bug in the tool")
            if key not in self._made:
                if self._dir is None:
                    self._dir = tempfile.mkdtemp(prefix="ops-bundles-")
                path = str(Path(self._dir) / f"{len(self._made)}.bundle")
                make_bundle(self.repo, commit, key[1], path)
                self._made[key] = path
            return self._made[key]

    def make_ahead(self, commit: str, basis: str | None) -> None:
        """Make the bundle a host will most likely ask for (over ``basis``, the commit it was last
        deployed to) in the background, while the host is connected to and locked: its deliver
        then finds it made. A wrong guess costs nothing but that background work."""

        def run() -> None:
            with contextlib.suppress(Exception):  # the deliver makes it (or fails) itself
                if self.has(commit):
                    self.path(commit, basis)

        t = threading.Thread(target=run, name="bundle-ahead", daemon=True)
        self._ahead.append(t)
        t.start()

    def get(self, commit: str, basis: str | None) -> bytes:
        return Path(self.path(commit, basis)).read_bytes()

    def close(self) -> None:
        for t in self._ahead:  # a bundle still being made ahead finishes (git runs are bounded)
            t.join(GIT_TIMEOUT)
        with self._lock:
            self._closed = True
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir, self._made = None, {}


def _is_ancestor(repo: str, a: str, b: str) -> bool:
    """True if a is an ancestor of b (false too when a is unknown here)."""
    code, _ = Git(repo, timeout=GIT_TIMEOUT).run(["merge-base", "--is-ancestor", a, b], ok_codes=None)
    return code == 0


def push_to_remote(source: Source, remote: str, branch: str | None) -> str:
    """pull mode: publish the commit on the remote branch the hosts will fetch."""
    target = branch or source.branch
    if not target:
        raise UsageError("pull mode needs a branch: HEAD is detached",
                         "check out a branch, or set branch = ... for the host")
    git(source.repo, "push", "-q", remote, f"{source.commit}:refs/heads/{target}")
    return target


# --- results ------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    duration: float = 0.0
    output: list[str] = field(default_factory=list)  # a failed build step's last output lines


@dataclass
class DeployOptions:
    dry_run: bool = False
    rollback: bool = True
    lock_wait: float = 0.0
    serial: int | None = None
    max_fail: int | None = None
    allow_dirty: bool = False
    ref: str = "HEAD"
    repo: str = "."
    to: str | None = None  # rollback --to REF: a commit of the host's history or of the repo


@dataclass
class HostDeploy:
    host: str
    run_id: str
    outcome: str = "pending"  # ok | failed | rolled-back | rollback-failed | locked | unreachable | skipped
    from_commit: str | None = None
    to_commit: str | None = None
    steps: list[Step] = field(default_factory=list)
    error: str | None = None
    advice: str = ""  # what to do about the error (an OpsError's advice), shown under the summary
    plan: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "planned")

    def journal_entry(self, user: str) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "user": user, "host": self.host, "from": self.from_commit,
            "to": self.to_commit, "outcome": self.outcome, "error": self.error,
            "started_at": self.started_at, "duration": round(self.duration, 3),
            "steps": [asdict(s) for s in self.steps],
        }


StepCallback = Callable[[str, Step], None]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def exit_code(results: list[HostDeploy]) -> int:
    bad = {r.outcome for r in results if not r.ok}
    if not bad:
        return 0
    codes = {"rolled-back": EXIT_ROLLED_BACK, "locked": LockHeld.exit_code, "unreachable": 3,
             "interrupted": Interrupted.exit_code}
    kinds = {codes.get(b, 1) for b in bad if b != "skipped"}
    return kinds.pop() if len(kinds) == 1 else 1


# --- one host -----------------------------------------------------------------------------------


class HostDeployer:
    """One host's deploy (or rollback): lock, deliver, build, stop, start, verify, record.

    Once stop has begun the run is a critical section: a Ctrl-C (``cancel``) no longer stops it at
    a step boundary; it finishes start and verify, or rolls back, so the services are never left
    down. Before stop, a Ctrl-C or a failed build puts the delivered tree back and changes nothing
    that runs. A dead link (TransportError) ends the host's run at once: its channel is never used
    again, and the agent on the host finishes its step and releases the lock on its own."""

    def __init__(self, session: HostSession, source: Source | None, opts: DeployOptions,
                 run_id: str, on_step: StepCallback | None = None,
                 cancel: threading.Event | None = None, bundles: Bundles | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.s = session
        # the agent's events inside a step (service spawned, gate passed, waiting on...), by host
        self.on_event = (lambda e: on_event(self.host.name, e)) if on_event else None
        self.bundles = bundles or (Bundles(source.repo) if source else None)
        self.cancel = cancel or threading.Event()
        self.host: Host = session.host
        self.source = source
        self.opts = opts
        self.result = HostDeploy(host=self.host.name, run_id=run_id)
        self.on_step = on_step or (lambda host, step: None)
        self.critical = False  # stop has begun: finish start+verify or roll back, whatever happens
        self.delivered = False  # the tree was changed: restore it if we end before stop
        self.present: dict[str, bool] = {}  # commit -> the host has it (from the probe)
        self.reused = False  # releases: the last delivery found its release there, built

    def _args(self, **extra: Any) -> dict[str, Any]:
        return {"host": self.s.host_args(), **extra}

    def step(self, name: str, fn: Callable[[], tuple], force: bool = False) -> bool:
        if self.cancel.is_set() and not (self.critical or force):
            raise Interrupted(f"{self.host.name}: interrupted before {name}")
        t = time.monotonic()
        output: list[str] = []
        try:
            ok, detail, *more = fn()
            output = more[0] if more else []
        except TransportError:
            raise  # the link is gone: no further step can run on this host
        except OpsError as exc:
            ok, detail = False, exc.message
        st = Step(name, ok, detail, round(time.monotonic() - t, 3), output)
        self.result.steps.append(st)
        self.on_step(self.host.name, st)
        return ok

    # the phases, each one agent call ---------------------------------------------------------

    def _deliver(self, commit: str, basis: str | None, rollback: bool = False) -> tuple[bool, str]:
        args = self._args(commit=commit, mode=self.host.source, remote=self.host.remote,
                          rollback=rollback, needs_build=bool(self.host.build_steps()))
        stream = None
        if self.host.source == "push" and not self.present.get(commit, False):
            if self.bundles is None or not self.bundles.has(commit):
                return False, missing_commit_text(self.host, commit, self.bundles)
            stream = self.bundles.path(commit, basis)
        r = self.s.call("git_deliver", args, stream=stream)
        self.reused = bool(r.get("reused"))
        detail = "; ".join(f"{x['name']}: {x['detail']}" for x in r["steps"])
        return r["ok"], detail

    def _build(self, commit: str) -> tuple[bool, str, list[str]]:
        steps = self.host.build_steps()
        r = self.s.call("build", self._args(
            cwd=self._tree(commit), commit=commit, steps=[b.to_agent() for b in steps],
            all_services=[s.to_agent() for s in self.host.services], mark_built=self.host.releases),
            timeout=sum(b.timeout for b in steps) + 60.0)
        took = sum(x["duration"] for x in r["steps"])
        if r["ok"]:
            return True, f"{len(r['steps'])} step(s) in {took:.1f}s", []
        last = r["steps"][-1]
        why = (f"timed out after {last['duration']:.0f}s" if last["timed_out"]
               else f"exited with code {last['exit_code']}")
        return False, f"build step '{last['name']}' {why}", last["tail"]

    def _tree(self, commit: str) -> str:
        """Where the new code is on the host: the checkout, or the commit's release."""
        if self.host.releases:
            return f"{self.host.root.rstrip('/')}/releases/{commit}"
        return self.host.path

    def _switch(self, commit: str) -> tuple[bool, str]:
        r = self.s.call("release_switch", self._args(commit=commit))
        return r["ok"], r["detail"]

    def _stop(self) -> tuple[bool, str]:
        r = control.stop(self.s, on_event=self.on_event)
        return r.ok, _summary(r.services)

    def _start(self) -> tuple[bool, str]:
        r = control.start(self.s, on_event=self.on_event)
        detail = _summary(r.services)
        for svc in r.services:
            if svc["outcome"] == "failed" and svc.get("log_tail"):
                detail += f" | last log lines of {svc['name']}: " + " / ".join(svc["log_tail"][-5:])
        return r.ok, detail

    def _verify(self) -> tuple[bool, str]:
        from ops import verify

        report = verify.verify_all(self.s, self.on_event)
        failed = [c for c in report.checks if not c["ok"]]
        if failed:
            return False, "; ".join(f"{c['name']} {c.get('service') or ''}: {c['detail']}" for c in failed)
        return True, f"{len(report.checks)} check(s) passed"

    def _roll(self, commit: str, basis: str | None, rollback: bool) -> str:
        """Deliver, build, stop, start, verify; the name of the stage that failed, or "ok"."""
        pre = "rollback-" if rollback else ""
        # a rollback after a failure is part of the critical section: Ctrl-C does not stop it
        if not self.step(pre + "deliver", lambda: self._deliver(commit, basis, rollback),
                         force=self.critical):
            return "deliver"
        self.delivered = True
        if not self._hooks("after_deliver", rollback):
            return "after_deliver"
        built = self.host.releases and self.reused  # a release that passed its build already
        if self.host.build_steps() and not built and not self.step(
                pre + "build", lambda: self._build(commit), force=self.critical):
            return "build"
        if not self._hooks("before_stop", rollback):
            return "before_stop"
        if self.cancel.is_set() and not self.critical:
            raise Interrupted(f"{self.host.name}: interrupted before stop")
        self.critical = True  # from here on, Ctrl-C finishes start and verify, or rolls back
        phases: list[tuple[str, Callable[[], tuple[bool, str]]]] = [("stop", self._stop)]
        if self.host.releases:
            phases.append(("switch", lambda: self._switch(commit)))
        phases += [("start", self._start), ("verify", self._verify)]
        for name, fn in phases:
            if not self.step(pre + name, fn):
                return name
            # deploy hooks (ops/hooks.py) after start and after verify fail like a built-in step
            if name in ("start", "verify") and not self._hooks("after_" + name, rollback):
                return "after_" + name
        return "ok"

    def _restore(self, commit: str | None) -> None:
        """Before stop: put the tree back at what runs (the old code keeps serving untouched)."""
        if commit and self.delivered and not self.critical and not self.host.releases:
            self.step("restore", lambda: self._deliver(commit, None, rollback=True), force=True)

    def _hooks(self, point: str, rollback: bool) -> bool:
        """The host's deploy hooks at this point (ops/hooks.py), each a step; none in a rollback."""
        from ops import hooks

        return rollback or all(self.step(f"hook {h.name}", lambda h=h: hooks.run(self.s, h))
                               for h in self.host.hooks.get(point, ()))

    def run(self, target: str | None = None, rollback_only: bool = False) -> HostDeploy:
        r = self.result
        t0 = time.monotonic()
        if self.opts.dry_run:
            return self._dry_run(target, rollback_only)
        planned = target or (self.source.commit if self.source else None)
        lock = self.s.call("deploy_lock", self._args(
            owner={"user": getpass.getuser(), "machine": socket.gethostname(), "pid": os.getpid(),
                   "commit": "(rollback)" if rollback_only else planned, "run_id": r.run_id},
            wait=self.opts.lock_wait, commits=[planned] if planned else []),
            timeout=self.opts.lock_wait + self.host.command_timeout)
        if not lock["acquired"]:
            r.outcome = "locked"
            r.error = describe_lock(self.host.name, lock["holder"])
            return r
        probe = lock["probe"]
        self.present = dict(probe.get("present") or {})
        recorded, marked, link_dead = None, [], False
        current = None
        try:
            current, r.to_commit, why = self._commits(probe, target, rollback_only)
            r.from_commit = current
            if not r.to_commit:
                r.outcome, r.error = "failed", why
                return r
            basis = probe["checkout"].get("basis", probe["checkout"]["head"])  # what the host's git has
            stage = self._roll(r.to_commit, basis, rollback=rollback_only)
            if stage == "ok":
                recorded = r.to_commit
                r.outcome = "ok"
                if rollback_only and current and current != r.to_commit:
                    marked = [current]  # rolled back: never walked back to again
            elif stage == "deliver":
                r.outcome, r.error = "failed", self._first_failure()
            elif stage in ("build", "after_deliver", "before_stop"):  # nothing was stopped yet
                self._restore(current)
                r.outcome, r.error = "failed", self._first_failure()
                r.advice = ("the old code kept running; fix the build and deploy again" if stage == "build"
                            else f"the old code kept running; the {stage} hook refused the commit")
            elif self.opts.rollback and current and current != r.to_commit and not rollback_only:
                marked = [r.to_commit]
                back = self._roll(current, None, rollback=True)
                r.outcome = "rolled-back" if back == "ok" else "rollback-failed"
                r.error = self._first_failure()
            else:
                r.outcome, r.error = "failed", self._first_failure()
        except Interrupted as exc:
            self._restore(current)
            r.outcome, r.error = "interrupted", exc.message
        except TransportError as exc:
            link_dead = True
            r.outcome, r.error, r.advice = "unreachable", exc.message, exc.advice
        finally:
            r.duration = time.monotonic() - t0
            if not link_dead:
                self._finish(recorded, marked, rollback_only)
        return r

    def _finish(self, recorded: str | None, marked: list[str], rollback_only: bool) -> None:
        """Record (on success) + journal + unlock: one round trip. A record that cannot be written
        (a full disk) fails the run: the host runs a commit its history does not know."""
        r = self.result
        try:
            self.s.call("deploy_finish", self._args(
                commit=recorded, run_id=r.run_id, via="rollback" if rollback_only else "deploy",
                rolled_back=marked, entry=r.journal_entry(getpass.getuser())))
        except TransportError:
            raise
        except OpsError as exc:
            what = f"{r.outcome}, but the end of the run was not recorded: {exc.message}"
            r.outcome, r.error, r.advice = "failed", what, exc.advice

    def _first_failure(self) -> str:
        return next((s.detail for s in self.result.steps if not s.ok), "")

    def _dry_run(self, target: str | None, rollback_only: bool) -> HostDeploy:
        """The plan, from the same probe and the same choices as a real run: what it says is what
        the run would do (a rollback with nowhere to go fails here too)."""
        r = self.result
        planned = target or (self.source.commit if self.source else None)
        probe = self.s.call("deploy_probe", self._args(commits=[planned] if planned else []))
        self.present = dict(probe.get("present") or {})
        r.from_commit, r.to_commit, why = self._commits(probe, target, rollback_only)
        if not r.to_commit:
            r.outcome, r.error = "failed", why
            return r
        notes = []
        if not self.present.get(r.to_commit, False):
            if self.host.source == "pull":
                notes.append(f"{r.to_commit[:12]} is not on the host: it would fetch it from "
                             f"{self.host.remote}")
            elif self.bundles is not None and self.bundles.has(r.to_commit):
                notes.append(f"{r.to_commit[:12]} is not on the host: it would be sent as a git bundle")
            else:
                r.outcome, r.error = "failed", missing_commit_text(self.host, r.to_commit, self.bundles)
                return r
        r.plan = build_plan(self.host, self.source, r.to_commit, probe,
                            control.status(self.s, health=False), notes)
        r.outcome = "planned"
        return r

    def _commits(self, probe: dict[str, Any], target: str | None,
                 rollback_only: bool) -> tuple[str | None, str | None, str]:
        """(what the host runs now, what to deploy, why there is nothing to deploy) from the probe."""
        record = probe["record"] or {}
        current = record.get("current") or probe["checkout"]["head"]
        if target:
            return current, target, ""
        if rollback_only and self.opts.to:
            to = resolve_to(self.opts.to, record)
            return current, to, "" if to else (
                f"{self.host.name}: --to {self.opts.to} is neither a commit of the local repository "
                "nor one deployed on the host (inv journal lists them)")
        if rollback_only:
            to = rollback_target(record)
            return current, to, "" if to else no_rollback_text(self.host.name, record)
        return current, self.source.commit if self.source else None, "nothing to deploy"


def rollback_target(record: dict[str, Any]) -> str | None:
    """The newest good deploy before the current one (pure). Skips the current commit and every
    commit that was rolled back (left by `inv rollback`, or a failed deploy that was rolled back),
    so rolling back twice walks back through the history and never re-deploys a bad commit."""
    current = record.get("current")
    bad = set(record.get("rolled_back") or []) | {current}
    history = [e for e in record.get("history") or [] if isinstance(e, dict) and e.get("commit")]
    for entry in reversed(history):
        if entry["commit"] not in bad:
            return entry["commit"]
    previous = record.get("previous")
    if not history and previous and previous not in bad:  # a record written before the history
        return previous
    return None


def resolve_to(ref: str, record: dict[str, Any]) -> str | None:
    """--to REF: a full commit id (resolved locally), or a prefix of a commit in the host's history."""
    if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
        return ref
    found = {e["commit"] for e in record.get("history") or []
             if isinstance(e, dict) and str(e.get("commit", "")).startswith(ref)}
    return found.pop() if len(found) == 1 else None


def no_rollback_text(host: str, record: dict[str, Any]) -> str:
    if not record.get("current"):
        return f"{host}: no deploy is recorded on the host: there is nothing to roll back to"
    return (f"{host}: no earlier good deploy is recorded before {record['current'][:12]} (the others "
            "were rolled back); pass --to REF to choose a commit")


def missing_commit_text(host: Host, commit: str, bundles: Bundles | None) -> str:
    where = f" or in {bundles.repo}" if bundles is not None else ""
    return (f"{host.name}: commit {commit[:12]} is not on the host{where}, so it cannot be delivered; "
            "fetch it into your local repository (git fetch) and run from there, or pass --to "
            "with a commit that exists")


def _summary(services: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['name']} {s['outcome']}" + (f" ({s['detail']})" if s["outcome"] == "failed"
                                                      else "") for s in services)


def describe_lock(host: str, holder: dict[str, Any] | None) -> str:
    if not holder:
        return f"{host}: the deploy lock is held"
    since = holder.get("since")
    age = f" since {time.strftime('%H:%M:%S', time.localtime(since))} ({int(time.time() - since)}s ago)" \
        if since else ""
    who = f"{holder.get('user', '?')}@{holder.get('machine', '?')}"
    stale = " - its holder is gone (stale): break it with `inv unlock --host " + host + "`" \
        if holder.get("stale") else ""
    return (f"{host}: deploy lock held by {who} (run {holder.get('run_id', '?')}, "
            f"commit {str(holder.get('commit', '?'))[:12]}){age}{stale}")


def build_plan(host: Host, source: Source | None, target: str | None, probe: dict[str, Any],
               status: list[dict[str, Any]], notes: list[str] | None = None) -> dict[str, Any]:
    """What a deploy would do on this host, as data (pure)."""
    start = control.with_children(host, None)
    running = {s["name"]: s for s in status}
    signalled = []
    for s in control.stop_order(start):
        st = running.get(s.name) or {}
        if st.get("state") == "running" and st.get("pid"):
            signalled.append({"service": s.name, "pid": st["pid"], "signal":
                              "(stopped with its supervisor)" if s.supervised
                              else control.systemctl_action(s, "stop") if s.is_unit else s.stop_signal})
    return {
        "host": host.name,
        "source": host.source,
        "checkout": probe["checkout"]["path"],
        "from": probe["record"].get("current") or probe["checkout"]["head"],
        "to": target,
        "subject": source.subject if source else None,
        "checkout_dirty": probe["checkout"]["dirty"],
        "lock": probe["lock"],
        "stop": [s.name for s in control.stop_order(start)],
        "start": [s.name for s in start],
        "gates": {s.name: [g for g, on in (("log", s.ready.log), ("port", s.ready.port),
                                            ("health", s.ready.health)) if on] for s in start},
        "running": {k: {"state": v["state"], "pid": v["pid"]} for k, v in running.items()},
        "would_signal": signalled,
        # unit services are stopped and started by systemd (a persisted one's unit is (re)written first)
        "systemctl": {
            "stop": [control.systemctl_action(s, "stop") for s in control.stop_order(start) if s.is_unit],
            "start": [a for s in start if s.is_unit for a in (
                ([f"write {s.unit_name} from the inventory, daemon-reload, enable"] if s.persist else [])
                + [control.systemctl_action(s, "start")])],
        },
        "build": [b.name for b in host.build_steps()],
        "layout": host.layout,
        "notes": list(notes or []),
        "hooks": {point: [h.name for h in hooks] for point, hooks in host.hooks.items() if hooks},
    }


# --- many hosts ---------------------------------------------------------------------------------


def local_journal_path() -> Path:
    env = os.environ.get("OPS_JOURNAL")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ops" / "journal.jsonl"


def last_deployed(host_name: str, tail_bytes: int = 65536) -> str | None:
    """The commit the local journal last saw a good deploy of this host to, or None: a guess at
    what the host has (its probe says for sure), read from the journal's last 64 KB."""
    path = local_journal_path()
    try:
        if not path.is_file():  # a device (/dev/full, /dev/zero) never ends: never read one
            return None
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            tail = f.read(tail_bytes)
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("host") == host_name:
            to = entry.get("to")
            return to if entry.get("outcome") == "ok" and isinstance(to, str) else None
    return None


def append_local_journal(results: list[HostDeploy]) -> str | None:
    """Append the runs to the local journal; a journal that cannot be written (disk full,
    /dev/full, permissions) is a warning returned to the caller, never a failed deploy."""
    path = local_journal_path()
    lines = "".join(json.dumps(r.journal_entry(getpass.getuser()), sort_keys=True) + "\n"
                    for r in results if r.outcome not in ("planned", "skipped"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(lines)
    except OSError as exc:
        return (f"warning: the local deploy journal {path} was not written "
                f"({exc.strerror or exc}); the hosts' journals have the runs (inv journal)")
    return None


def _run_batch(hosts: list[Host], fn: Callable[[Host], HostDeploy], cancel: threading.Event,
               on_interrupt: Callable[[], None]) -> dict[str, HostDeploy]:
    """One thread per host. The first Ctrl-C asks every host to stop after its current step (then
    the lock is released); a second one abandons them (each host's agent still finishes its step,
    releases the lock and exits when the connection closes)."""
    out: dict[str, HostDeploy] = {}
    done = threading.Semaphore(0)

    def target(h: Host) -> None:
        try:
            out[h.name] = fn(h)
        except BaseException as exc:  # a bug on one host must not hide the others
            out[h.name] = HostDeploy(host=h.name, run_id="", outcome="failed",
                                     error=f"unexpected {type(exc).__name__}: {exc}")
        finally:
            done.release()

    for h in hosts:
        threading.Thread(target=target, args=(h,), daemon=True).start()
    # wait on a semaphore, not Thread.join: a Ctrl-C inside join() can leave is_alive() lying
    waited = 0
    try:
        while waited < len(hosts):
            if done.acquire(timeout=0.1):
                waited += 1
    except KeyboardInterrupt:
        cancel.set()
        on_interrupt()
        while waited < len(hosts):
            if done.acquire(timeout=0.1):
                waited += 1
    return out


def deploy(inv: Inventory, hosts: list[Host], opts: DeployOptions, on_step: StepCallback | None = None,
           rollback_only: bool = False, on_interrupt: Callable[[], None] | None = None,
           on_event: Callable[[str, dict[str, Any]], None] | None = None,
           on_warning: Callable[[str], None] | None = None) -> list[HostDeploy]:
    """Deploy to hosts in parallel, or in rolling batches (--serial N) with --max-fail."""
    run_id = new_run_id()
    cancel = threading.Event()
    source = None if rollback_only else local_source(opts.repo, opts.ref, opts.allow_dirty)
    top = source.repo if source else Git(opts.repo, timeout=GIT_TIMEOUT).toplevel()
    # a rollback to a commit the host lost is sent from the local repository when it has it
    bundles = Bundles(top) if top else None
    if rollback_only and opts.to and top:
        opts = replace(opts, to=Git(top, timeout=GIT_TIMEOUT).resolve(opts.to) or opts.to)
    if source is not None and not opts.dry_run:
        for remote, branch in {(h.remote, h.branch) for h in hosts if h.source == "pull"}:
            push_to_remote(source, remote, branch)
        if bundles is not None:
            for basis in {last_deployed(h.name) for h in hosts if h.source == "push"}:
                bundles.make_ahead(source.commit, basis)

    def one(host: Host) -> HostDeploy:
        t = time.monotonic()
        try:
            with connect(inv, host) as session:
                done = HostDeployer(session, source, opts, run_id, on_step, cancel, bundles,
                                    on_event=on_event).run(rollback_only=rollback_only)
            done.duration = time.monotonic() - t  # the summary's time: connecting included
            return done
        except OpsError as exc:
            outcome = "unreachable" if exc.exit_code == 3 else "failed"
            return HostDeploy(host=host.name, run_id=run_id, outcome=outcome, error=exc.message,
                              advice=exc.advice, to_commit=source.commit if source else None,
                              duration=time.monotonic() - t)

    batch = opts.serial or len(hosts)
    results: dict[str, HostDeploy] = {}
    failures = 0
    for i in range(0, len(hosts), batch):
        group = hosts[i:i + batch]
        stop_reason = None
        if cancel.is_set():
            stop_reason = "not started: interrupted"
        elif opts.max_fail is not None and failures >= opts.max_fail:
            stop_reason = f"not started: {failures} host(s) failed (--max-fail {opts.max_fail})"
        if stop_reason:
            for h in group:
                results[h.name] = HostDeploy(host=h.name, run_id=run_id, outcome="skipped",
                                             error=stop_reason)
            continue
        try:
            batch_results = _run_batch(group, one, cancel, on_interrupt or (lambda: None))
        except BaseException:
            if bundles is not None:
                bundles.close()
            raise
        for r in batch_results.values():
            results[r.host] = r
            failures += 0 if r.ok else 1
    if bundles is not None:
        bundles.close()
    ordered = [results[h.name] for h in hosts]
    if not opts.dry_run:
        warning = append_local_journal(ordered)
        if warning:
            (on_warning or (lambda text: None))(warning)
    return ordered


def unlock(session: HostSession, force: bool = False) -> dict[str, Any]:
    probe = session.call("deploy_probe", {"host": session.host_args()})
    holder = probe["lock"]
    if holder is None:
        return {"released": False, "detail": "no lock is held"}
    if not holder.get("stale") and not force:
        raise LockHeld(describe_lock(session.host.name, holder) + " and its holder is still running",
                       "wait for it to finish, or pass --force to break it anyway")
    return session.call("deploy_unlock", {"host": session.host_args(),
                                          "force": "any" if force else True})


def journal(session: HostSession, last: int = 20) -> list[dict[str, Any]]:
    return session.call("journal_read", {"host": session.host_args(), "last": last})["entries"]
