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

import base64
import getpass
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops import control
from ops.errors import Interrupted, LockHeld, OpsError, UsageError
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
    dirty = tuple(git(top, "status", "--porcelain", "--untracked-files=no").splitlines())
    if dirty and not allow_dirty:
        raise UsageError(
            f"the working tree of {top} has uncommitted changes ({len(dirty)} file(s): "
            f"{', '.join(d[3:] for d in dirty[:3])})",
            "commit or stash them (a deploy ships commits, not your working tree), "
            "or pass --allow-dirty to deploy HEAD anyway",
        )
    subject = git(top, "log", "-1", "--format=%s", commit)
    return Source(repo=top, commit=commit, branch=branch, subject=subject, dirty=dirty)


def make_bundle(repo: str, commit: str, basis: str | None) -> bytes:
    """A git bundle holding `commit` as refs/ops/deploy, thin over `basis` (an ancestor of commit
    that the host has). Not thread-safe on one repo: go through Bundles."""
    git(repo, "update-ref", "refs/ops/deploy", commit)
    try:
        args = ["bundle", "create", "-q"]
        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "deploy.bundle")
            refs = ["refs/ops/deploy"] + ([f"^{basis}"] if basis else [])
            git(repo, *args, path, *refs)
            return Path(path).read_bytes()
    finally:
        git(repo, "update-ref", "-d", "refs/ops/deploy", check=False)


class Bundles:
    """Bundles for one deploy run, shared by the host threads: one `git bundle` per distinct basis
    (thirty hosts at the same commit cost one), and never two git runs on the ref at once."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._made: dict[tuple[str, str | None], bytes] = {}

    def get(self, commit: str, basis: str | None) -> bytes:
        key = (commit, basis if basis and basis != commit and _is_ancestor(self.repo, basis, commit)
               else None)
        with self._lock:
            if key not in self._made:
                self._made[key] = make_bundle(self.repo, commit, key[1])
            return self._made[key]


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
    def __init__(self, session: HostSession, source: Source | None, opts: DeployOptions,
                 run_id: str, on_step: StepCallback | None = None,
                 cancel: threading.Event | None = None, bundles: Bundles | None = None) -> None:
        self.s = session
        self.bundles = bundles or (Bundles(source.repo) if source else None)
        self.cancel = cancel or threading.Event()
        self.host: Host = session.host
        self.source = source
        self.opts = opts
        self.result = HostDeploy(host=self.host.name, run_id=run_id)
        self.on_step = on_step or (lambda host, step: None)

    def _args(self, **extra: Any) -> dict[str, Any]:
        return {"host": self.s.host_args(), **extra}

    def step(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        if self.cancel.is_set():
            raise Interrupted(f"{self.host.name}: interrupted before {name}")
        t = time.monotonic()
        try:
            ok, detail = fn()
        except OpsError as exc:
            ok, detail = False, exc.message
        st = Step(name, ok, detail, round(time.monotonic() - t, 3))
        self.result.steps.append(st)
        self.on_step(self.host.name, st)
        return ok

    # the phases, each one agent call ---------------------------------------------------------

    def _deliver(self, commit: str, basis: str | None, rollback: bool = False) -> tuple[bool, str]:
        args = self._args(commit=commit, mode=self.host.source, remote=self.host.remote,
                          rollback=rollback)
        if self.host.source == "push" and not rollback:
            assert self.bundles is not None
            args["bundle"] = base64.b64encode(self.bundles.get(commit, basis)).decode()
        r = self.s.call("git_deliver", args)
        detail = "; ".join(f"{x['name']}: {x['detail']}" for x in r["steps"])
        return r["ok"], detail

    def _stop(self) -> tuple[bool, str]:
        r = control.stop(self.s)
        return r.ok, _summary(r.services)

    def _start(self) -> tuple[bool, str]:
        r = control.start(self.s)
        detail = _summary(r.services)
        for svc in r.services:
            if svc["outcome"] == "failed" and svc.get("log_tail"):
                detail += f" | last log lines of {svc['name']}: " + " / ".join(svc["log_tail"][-5:])
        return r.ok, detail

    def _verify(self) -> tuple[bool, str]:
        from ops import verify

        report = verify.verify_all(self.s)
        failed = [c for c in report.checks if not c["ok"]]
        if failed:
            return False, "; ".join(f"{c['name']} {c.get('service') or ''}: {c['detail']}" for c in failed)
        return True, f"{len(report.checks)} check(s) passed"

    def _roll(self, commit: str, basis: str | None, rollback: bool) -> bool:
        return (
            self.step("rollback-deliver" if rollback else "deliver",
                      lambda: self._deliver(commit, basis, rollback))
            and self._hooks("after_deliver", rollback) and self._hooks("before_stop", rollback)
            and self.step("rollback-stop" if rollback else "stop", self._stop)
            and self.step("rollback-start" if rollback else "start", self._start)
            and self._hooks("after_start", rollback)
            and self.step("rollback-verify" if rollback else "verify", self._verify)
            and self._hooks("after_verify", rollback)
        )

    def _hooks(self, point: str, rollback: bool) -> bool:
        """The host's deploy hooks at this point (ops/hooks.py), each a step; none in a rollback."""
        from ops import hooks

        return rollback or all(self.step(f"hook {h.name}", lambda h=h: hooks.run(self.s, h))
                               for h in self.host.hooks.get(point, ()))

    def run(self, target: str | None = None, rollback_only: bool = False) -> HostDeploy:
        r = self.result
        t0 = time.monotonic()
        if self.opts.dry_run:
            probe = self.s.call("deploy_probe", self._args())
            r.from_commit, r.to_commit = self._commits(probe, target, rollback_only)
            r.plan = build_plan(self.host, self.source, r.to_commit, probe,
                                control.status(self.s, health=False))
            r.outcome = "planned"
            return r
        lock = self.s.call("deploy_lock", self._args(
            owner={"user": getpass.getuser(), "machine": socket.gethostname(), "pid": os.getpid(),
                   "commit": "(rollback)" if rollback_only else target or self.source.commit,
                   "run_id": r.run_id},
            wait=self.opts.lock_wait), timeout=self.opts.lock_wait + self.host.command_timeout)
        if not lock["acquired"]:
            r.outcome = "locked"
            r.error = describe_lock(self.host.name, lock["holder"])
            return r
        probe = lock["probe"]
        recorded = None
        try:
            current, r.to_commit = self._commits(probe, target, rollback_only)
            r.from_commit = current
            if not r.to_commit:
                r.outcome, r.error = "failed", "no previous deploy is recorded on the host"
                return r
            ok = self._roll(r.to_commit, probe["checkout"]["head"], rollback=rollback_only)
            if ok and self.cancel.is_set():
                raise Interrupted(f"{self.host.name}: interrupted before recording the deploy")
            if ok:
                recorded = r.to_commit
                r.outcome = "ok"
            elif (self.opts.rollback and current and current != r.to_commit and not rollback_only
                  and r.steps[0].ok):  # a refused delivery changed nothing: nothing to roll back
                back = self._roll(current, None, rollback=True)
                r.outcome = "rolled-back" if back else "rollback-failed"
                r.error = next(s.detail for s in r.steps if not s.ok)
            else:
                r.outcome = "failed"
                r.error = next(s.detail for s in r.steps if not s.ok)
        except Interrupted as exc:
            r.outcome, r.error = "interrupted", exc.message
        finally:
            r.duration = time.monotonic() - t0
            # record (on success) + journal + unlock: one round trip
            self.s.call("deploy_finish", self._args(commit=recorded, run_id=r.run_id,
                                                    entry=r.journal_entry(getpass.getuser())))
        return r

    def _commits(self, probe: dict[str, Any], target: str | None,
                 rollback_only: bool) -> tuple[str | None, str | None]:
        """(what the host runs now, what to deploy) from the probe."""
        record = probe["record"] or {}
        current = record.get("current") or probe["checkout"]["head"]
        if rollback_only:
            return current, record.get("previous")
        return current, target or (self.source.commit if self.source else None)


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
               status: list[dict[str, Any]]) -> dict[str, Any]:
    """What a deploy would do on this host, as data (pure)."""
    start = control.with_children(host, None)
    running = {s["name"]: s for s in status}
    signalled = []
    for s in control.stop_order(start):
        st = running.get(s.name) or {}
        if st.get("state") == "running" and st.get("pid"):
            signalled.append({"service": s.name, "pid": st["pid"], "signal":
                              "(stopped with its supervisor)" if s.supervised else s.stop_signal})
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
        "hooks": {point: [h.name for h in hooks] for point, hooks in host.hooks.items() if hooks},
    }


# --- many hosts ---------------------------------------------------------------------------------


def local_journal_path() -> Path:
    env = os.environ.get("OPS_JOURNAL")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ops" / "journal.jsonl"


def append_local_journal(results: list[HostDeploy]) -> None:
    path = local_journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in results:
            if r.outcome in ("planned", "skipped"):
                continue
            f.write(json.dumps(r.journal_entry(getpass.getuser()), sort_keys=True) + "\n")


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
           rollback_only: bool = False, on_interrupt: Callable[[], None] | None = None
           ) -> list[HostDeploy]:
    """Deploy to hosts in parallel, or in rolling batches (--serial N) with --max-fail."""
    run_id = new_run_id()
    cancel = threading.Event()
    source = None if rollback_only else local_source(opts.repo, opts.ref, opts.allow_dirty)
    bundles = Bundles(source.repo) if source else None
    if source is not None and not opts.dry_run:
        for remote, branch in {(h.remote, h.branch) for h in hosts if h.source == "pull"}:
            push_to_remote(source, remote, branch)

    def one(host: Host) -> HostDeploy:
        t = time.monotonic()
        try:
            with connect(inv, host) as session:
                return HostDeployer(session, source, opts, run_id, on_step, cancel, bundles).run(
                    rollback_only=rollback_only)
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
        for r in _run_batch(group, one, cancel, on_interrupt or (lambda: None)).values():
            results[r.host] = r
            failures += 0 if r.ok else 1
    ordered = [results[h.name] for h in hosts]
    if not opts.dry_run:
        append_local_journal(ordered)
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
