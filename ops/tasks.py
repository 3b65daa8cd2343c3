"""Invoke tasks: thin wiring from command-line flags to library calls and the reporter.

Nothing heavy is imported at module level (no fabric, paramiko or rich), so `inv --list` is fast;
each task imports what it needs when it runs. Only tasks turn errors into exit codes.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from invoke import Collection, Exit

from ops.cli import task

HOST_HELP = "host name, comma list, group, or 'all' (default: the only host)"
SERVICE_HELP = "a service name (repeatable, or comma list); default: all services of the host"
JSON_HELP = "print JSON instead of a table"
NO_PERSIST_HELP = "neither use nor keep a held connection ([ssh] persist in hosts.toml)"


def _no_persist(flag: bool) -> None:
    if flag:
        os.environ["OPS_NO_PERSIST"] = "1"  # read by ops.persist, in this process only


def _inventory(c: Any = None):
    from ops import inventory

    path = os.environ.get("OPS_INVENTORY") or "hosts.toml"
    return inventory.load(path)


def _names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def number(value: Any, flag: str, whole: bool = False, minimum: float = 0.0) -> Any:
    """A numeric flag's value, or a UsageError naming the flag. Numeric flags have string defaults
    so that invoke passes the text through instead of failing with a traceback on `--serial abc`."""
    from ops.errors import UsageError

    shown = ("-" if len(flag) == 1 else "--") + flag
    try:
        out = int(value) if whole else float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if whole else "a number"
        raise UsageError(f"{shown} takes {kind}, got {value!r}") from None
    if out < minimum:
        raise UsageError(f"{shown} must be at least {minimum:g}, got {value!r}")
    return out


def errors_to_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """OpsError -> one clear message on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ops import fastexit
        from ops.errors import OpsError

        try:
            result = fn(*args, **kwargs)
        except OpsError as exc:
            from ops.report import Reporter

            Reporter().error(exc)
            fastexit.done(exc.exit_code)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            fastexit.done(130)
            raise Exit("interrupted", code=130) from None
        except Exit as exc:
            fastexit.done(exc.code if isinstance(exc.code, int) else 1)
            raise
        except BaseException:
            fastexit.cancel()  # a bug: Python reports it the usual way
            raise
        finally:
            _drop_early()
        fastexit.done(0)
        return result

    return wrapper


def _open_early(inv: Any, targets: list[Any]) -> None:
    """Begin connecting to the task's hosts now, before its remaining imports and preparation
    (ops/session.py open_early); the task's own connect adopts each session."""
    from ops.session import open_early

    open_early(inv, targets)


def _drop_early() -> None:
    session = sys.modules.get("ops.session")
    if session is not None:
        session.drop_early()


def _exit_for(outcomes: list[Any], ok: Callable[[Any], bool]) -> None:
    codes = [o.error.exit_code for o in outcomes if not o.ok]
    if codes or not all(ok(o) for o in outcomes if o.ok):
        raise Exit(code=max(codes) if codes and all(o.ok is False for o in outcomes) else 1)


@task(help={"json": JSON_HELP})
@errors_to_exit
def hosts(c, json=False):
    """List hosts and services, validating the inventory."""
    from ops.report import Reporter, choose_format

    inv = _inventory(c)
    Reporter(choose_format(json)).hosts(inv)


@task(
    iterable=["service"],
    help={
        "host": HOST_HELP,
        "service": SERVICE_HELP,
        "json": JSON_HELP,
        "no-health": "skip the HTTP health checks",
        "no-persist": NO_PERSIST_HELP,
    },
)
@errors_to_exit
def status(c, host=None, service=None, json=False, no_health=False, no_persist=False):
    """Show each service's state, pid, uptime, port holder and health."""
    _no_persist(no_persist)
    from ops.inventory import resolve_hosts

    inv = _inventory(c)
    targets = resolve_hosts(inv, host)
    _open_early(inv, targets)
    from ops import control
    from ops.report import Reporter, choose_format
    from ops.session import on_hosts

    names = _names(service)
    for h in targets:  # an unknown service name is a usage error (exit 2), not an unreachable host
        control.with_children(h, names)
    outcomes = on_hosts(inv, targets, lambda s: control.status(s, names, health=not no_health))
    Reporter(choose_format(json)).status(outcomes)
    code = control.status_code(outcomes)  # 0 only if every service runs and is healthy (README)
    if code:
        raise Exit(code=code)


def _phase(phase: str, host: str | None, service: list[str] | None, as_json: bool,
           lock_wait: float = 0.0) -> None:
    from ops.inventory import resolve_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    _open_early(inv, targets)  # an unknown service below is still exit 2: the sessions are dropped
    from ops import control
    from ops.report import Board, Reporter, choose_format
    from ops.session import on_hosts

    names = _names(service)
    for h in targets:  # fail early on an unknown service name, before any host is acted on
        control.with_children(h, names)
    rep = Reporter(choose_format(as_json))
    with Board(rep, phase, [h.name for h in targets]) as board:

        def run(session):
            session.lock_wait = lock_wait
            return getattr(control, phase)(
                session, names, on_event=lambda e: board.event(session.host.name, e))

        outcomes = on_hosts(inv, targets, run)
    rep.phase(phase, outcomes)
    _exit_for(outcomes, lambda o: o.value.ok)


LOCK_WAIT_HELP = ("seconds to wait while another operation (deploy, start, stop...) holds the host "
                  "(default 0: refuse at once, exit 4)")
PHASE_HELP = {"host": HOST_HELP, "service": SERVICE_HELP, "json": JSON_HELP, "lock-wait": LOCK_WAIT_HELP,
              "no-persist": NO_PERSIST_HELP}


@task(dry="refuse", iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def start(c, host=None, service=None, json=False, lock_wait="0", no_persist=False):
    """Start services in dependency order; each passes its gates or is rolled back."""
    _no_persist(no_persist)
    _phase("start", host, service, json, number(lock_wait, "lock-wait"))


@task(dry="refuse", iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def stop(c, host=None, service=None, json=False, lock_wait="0", no_persist=False):
    """Stop services (supervisors first), escalate to KILL, sweep orphans, prove none left."""
    _no_persist(no_persist)
    _phase("stop", host, service, json, number(lock_wait, "lock-wait"))


@task(dry="refuse", iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def restart(c, host=None, service=None, json=False, lock_wait="0", no_persist=False):
    """Stop then start services, with the same gates as start."""
    _no_persist(no_persist)
    _phase("restart", host, service, json, number(lock_wait, "lock-wait"))


@task(
    positional=["service"],
    help={
        "service": "the service whose log to show",
        "host": HOST_HELP,
        "n": "how many lines (default 50)",
        "follow": "stream new lines until Ctrl-C",
        "json": JSON_HELP,
        "no-persist": NO_PERSIST_HELP,
    },
)
@errors_to_exit
def logs(c, service, host=None, n="50", follow=False, json=False, no_persist=False):
    """Print the last lines of a service's log (--follow streams until Ctrl-C)."""
    _no_persist(no_persist)
    from ops import control
    from ops.errors import UsageError
    from ops.inventory import resolve_hosts
    from ops.report import Reporter, choose_format
    from ops.session import connect

    inv = _inventory(c)
    targets = resolve_hosts(inv, host)
    if len(targets) != 1:
        raise UsageError("logs needs exactly one host", "pass --host NAME")
    _open_early(inv, targets)
    h = targets[0]
    svc = control.with_children(h, [service])[0]
    rep = Reporter(choose_format(json))
    with connect(inv, h) as session:
        rep.log_lines(h.name, svc.name, control.logs(session, svc, number(n, "n", whole=True)))
        if follow:
            control.follow(session, svc, rep.follow_line)


_UNIT_BASE_HELP = dict(PHASE_HELP)
UNIT_HELP = {**_UNIT_BASE_HELP, "now": "also start (enable) / stop (disable) it now, with the same gates"}


def _unit_phase(phase: str, host: str | None, service: list[str] | None, as_json: bool, lock_wait: str = "0",
                **opts: Any) -> None:
    """enable / disable / persist: like start/stop, one agent call per host."""
    from ops import control
    from ops.inventory import resolve_hosts
    from ops.report import Board, Reporter, choose_format
    from ops.session import on_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    names = _names(service)
    picked = [s for h in targets for s in control.unit_services(h, names, phase, persist=phase == "persist")]
    if not picked:
        from ops.errors import UsageError

        raise UsageError(f"{phase}: no service to act on on {', '.join(h.name for h in targets)}",
                         'declare manager = "systemd" (or name a tool-run service for persist)')
    rep = Reporter(choose_format(as_json))
    wait = number(lock_wait, "lock-wait")
    with Board(rep, phase, [h.name for h in targets]) as board:

        def run(session):
            session.lock_wait = wait
            return getattr(control, phase)(
                session, names, on_event=lambda e: board.event(session.host.name, e), **opts)

        outcomes = on_hosts(inv, targets, run)
    rep.phase(phase, outcomes)
    if opts.get("dry_run"):
        rep.unit_files(outcomes)
    _exit_for(outcomes, lambda o: o.value.ok)


@task(dry="refuse", iterable=["service"], help=UNIT_HELP)
@errors_to_exit
def enable(c, host=None, service=None, now=False, json=False, lock_wait="0", no_persist=False):
    """Start systemd unit services at boot (systemctl enable); --now also starts them with gates."""
    _no_persist(no_persist)
    _unit_phase("enable", host, service, json, lock_wait, now=now)


@task(dry="refuse", iterable=["service"], help=UNIT_HELP)
@errors_to_exit
def disable(c, host=None, service=None, now=False, json=False, lock_wait="0", no_persist=False):
    """Do not start systemd unit services at boot (systemctl disable); --now also stops them."""
    _no_persist(no_persist)
    _unit_phase("disable", host, service, json, lock_wait, now=now)


@task(dry="plan", iterable=["service"],
      help={**_UNIT_BASE_HELP, "dry-run": "print the unit files that would be written; change nothing"})
@errors_to_exit
def persist(c, host=None, service=None, dry_run=False, json=False, lock_wait="0", no_persist=False):
    """Write a systemd unit for tool-run services, enable it: they come back after a reboot."""
    _no_persist(no_persist)
    _unit_phase("persist", host, service, json, lock_wait, dry_run=dry_run)


ns = Collection()
for t in (hosts, status, start, stop, restart, logs, enable, disable, persist):
    ns.add_task(t)


DEPLOY_HELP = {
    "host": HOST_HELP,
    "dry-run": "print the plan per host and change nothing",
    "no-rollback": "on failure, leave the host as it is instead of rolling back",
    "lock-wait": "seconds to wait for another deploy's lock (default 0: refuse at once)",
    "serial": "deploy in rolling batches of N hosts (default: all in parallel)",
    "max-fail": "stop starting new batches after N failed hosts",
    "allow-dirty": "deploy HEAD even if the working tree has uncommitted changes",
    "ref": "the commit, branch or tag to deploy (default HEAD)",
    "json": JSON_HELP,
    "no-persist": NO_PERSIST_HELP,
}


def _deploy(host, json, rollback_only=False, **opts):
    from ops import deploy as dep
    from ops import report
    from ops.inventory import resolve_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    options = dep.DeployOptions(**opts)
    if not options.serial:  # all hosts at once (a rolling deploy connects batch by batch)
        _open_early(inv, targets)
    rep = report.Reporter(report.choose_format(json))
    title = "rollback" if rollback_only else "deploy"
    with report.Board(rep, title, [h.name for h in targets], transient=False) as board:
        results = dep.deploy(
            inv, targets, options, on_step=board.step, rollback_only=rollback_only, on_event=board.event,
            on_warning=rep.warning,
            on_interrupt=lambda: rep.line("interrupted: each host stops after its current step (a host "
                                          "already stopping finishes start and verify, or rolls back) "
                                          "and releases its lock (Ctrl-C again to abandon them)",
                                          "bold yellow"))
    report.deploy_summary(rep, results)
    code = dep.exit_code(results)
    if code:
        raise Exit(code=code)


@task(dry="plan", help=DEPLOY_HELP)
@errors_to_exit
def deploy(c, host=None, dry_run=False, no_rollback=False, lock_wait="0", serial="0", max_fail="",
           allow_dirty=False, ref="HEAD", json=False, no_persist=False):
    """Deploy: lock, deliver code, purge caches, ordered stop/start, verify, roll back on failure."""
    _no_persist(no_persist)
    _deploy(host, json, dry_run=dry_run, rollback=not no_rollback,
            lock_wait=number(lock_wait, "lock-wait"),
            serial=number(serial, "serial", whole=True) or None,
            max_fail=number(max_fail, "max-fail", whole=True) if max_fail != "" else None,
            allow_dirty=allow_dirty, ref=ref)


@task(dry="plan", help={"host": HOST_HELP, "dry-run": "show the plan only", "json": JSON_HELP,
                        "lock-wait": DEPLOY_HELP["lock-wait"],
                        "to": "roll back to this commit (of the host's history or the repo)",
                        "no-persist": NO_PERSIST_HELP})
@errors_to_exit
def rollback(c, host=None, dry_run=False, lock_wait="0", to=None, json=False, no_persist=False):
    """Roll back to the last good deploy before the current one (never to a rolled-back one)."""
    _no_persist(no_persist)
    _deploy(host, json, rollback_only=True, dry_run=dry_run, lock_wait=number(lock_wait, "lock-wait"),
            to=to or None)


@task(dry="refuse", help={"host": HOST_HELP, "force": "break the lock even if its holder runs",
                          "no-persist": NO_PERSIST_HELP})
@errors_to_exit
def unlock(c, host=None, force=False, no_persist=False):
    """Break a stale deploy lock (one whose deploy is gone)."""
    _no_persist(no_persist)
    from ops import deploy as dep
    from ops.inventory import resolve_hosts
    from ops.report import Reporter, choose_format
    from ops.session import connect

    inv = _inventory()
    rep = Reporter(choose_format(False))
    for h in resolve_hosts(inv, host):
        with connect(inv, h) as session:
            r = dep.unlock(session, force=force)
        rep.line(f"{h.name}: " + ("lock released" if r["released"] else r.get("detail", "not released")))


@task(help={"host": HOST_HELP, "n": "how many runs (default 20)", "json": JSON_HELP,
            "no-persist": NO_PERSIST_HELP})
@errors_to_exit
def journal(c, host=None, n="20", json=False, no_persist=False):
    """Show the last deploy runs recorded on a host."""
    _no_persist(no_persist)
    from ops import deploy as dep
    from ops import report
    from ops.inventory import resolve_hosts
    from ops.session import connect

    inv = _inventory()
    rep = report.Reporter(report.choose_format(json))
    for h in resolve_hosts(inv, host):
        with connect(inv, h) as session:
            report.journal(rep, h.name, dep.journal(session, number(n, "n", whole=True)))


@task(auto_shortflags=False)
@errors_to_exit
def disconnect(c):
    """Close every connection and agent held for reuse ([ssh] persist in hosts.toml)."""
    from ops import persist
    from ops.report import Reporter, choose_format

    rep = Reporter(choose_format(False))
    closed = persist.disconnect_all()
    n = sum(int(h.get("closed") or 0) for h in closed)
    rep.line(f"closed {n} held connection{'s' if n != 1 else ''}" if closed else "nothing was held")


for t in (deploy, rollback, unlock, journal, disconnect):
    ns.add_task(t)


PREFLIGHT_HELP = {
    "base": "the base to compare with (default: [preflight] base, else origin/main)",
    "commits": "exact number of commits expected ahead of the base",
    "expect": "comma list of (short) commit ids that must be ahead of the base",
    "keep-going": "run every check instead of stopping at the first failure",
    "markdown": "print a '## Verification' section for the PR body instead of the table",
    "json": JSON_HELP,
    "host": "restrict the remote checks to these hosts (name, comma list, group)",
    "repo": "the local checkout to check (default: [preflight] repo, else the current directory)",
    "dry-run": "list the checks and what each verifies; run nothing",
    "no-fetch": "do not fetch the base's remote first (the age of the local ref is shown)",
    "no-persist": NO_PERSIST_HELP,
}


@task(dry="plan", help=PREFLIGHT_HELP)
@errors_to_exit
def preflight(c, base=None, commits=None, expect=None, keep_going=False, markdown=False, json=False,
              host=None, repo=None, dry_run=False, no_fetch=False, no_persist=False):
    """Checks before a PR: commits, clean tree, diff size, remote health and test counts.

    Stops at the first failing check (--keep-going runs all); exit 0 only if every check passed.
    """
    _no_persist(no_persist)
    from ops import preflight as pf
    from ops import report
    from ops.errors import UsageError

    if markdown and json:
        raise UsageError("--markdown and --json are exclusive", "pick one")
    inv = _inventory()
    settings = pf.settings(inv, repo=repo, base=base, commits=commits, expect=expect, host=host,
                           fetch=False if no_fetch else None)
    rep = report.Reporter(report.choose_format(json))
    if dry_run:
        checks = pf.plan(settings, inv)
        report.preflight_plan(rep, [(spec, pf.describe(spec, settings, inv)) for spec in checks])
        return
    result = pf.run(inv, settings, keep_going=keep_going,
                    on_start=lambda spec: report.preflight_starting(rep, spec),
                    on_result=lambda r: report.preflight_progress(rep, r))
    if markdown:
        report.preflight_markdown(rep, result)
    else:
        report.preflight(rep, result)
    if not result.ok:
        raise Exit(code=result.exit_code)


ns.add_task(preflight)


PR_HELP = {
    "base": "the PR's base (default: [preflight] base); another branch for a stacked PR, e.g. origin/parent",
    "title": "the PR's title (default: the commit's subject, or the branch name for several)",
    "draft": "open it as a draft",
    "body-file": "where to write the body (default: ops-pr-body.md in the repository's git directory)",
    "commits": PREFLIGHT_HELP["commits"],
    "expect": PREFLIGHT_HELP["expect"],
    "host": PREFLIGHT_HELP["host"],
    "repo": PREFLIGHT_HELP["repo"],
    "no-fetch": PREFLIGHT_HELP["no-fetch"],
    "json": JSON_HELP,
    "dry-run": "list the checks and the gh command; run nothing",
    "no-persist": NO_PERSIST_HELP,
}


@task(auto_shortflags=False, help=PR_HELP)
@errors_to_exit
def pr(c, base=None, title=None, draft=False, body_file=None, commits=None, expect=None, host=None,
       repo=None, no_fetch=False, json=False, dry_run=False, no_persist=False):
    """Run the pre-flight; only if every check passed, open the PR with gh and print its URL."""
    _no_persist(no_persist)
    from ops import pr as prm
    from ops import preflight as pf
    from ops import report

    inv = _inventory()
    settings = pf.settings(inv, repo=repo, base=base, commits=commits, expect=expect, host=host,
                           fetch=False if no_fetch else None)
    rep = report.Reporter(report.choose_format(json))
    opts = prm.PrOptions(title=title, draft=draft, body_file=body_file, cwd=os.getcwd())
    runner = prm.PrRunner(inv, settings, opts)
    if dry_run:
        checks = pf.plan(settings, inv)
        report.pr_plan(rep, [(spec, pf.describe(spec, settings, inv)) for spec in checks],
                       runner.planned_argv())
        return
    outcome = runner.run(on_start=lambda spec: report.preflight_starting(rep, spec),
                         on_result=lambda r: report.preflight_progress(rep, r))
    report.pr(rep, outcome)
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)


ns.add_task(pr)


# --- verify.* ----------------------------------------------------------------------------------


def _verify(kind: str, host: str | None, as_json: bool, run: Callable[..., Any], pick=None) -> None:
    """Run one verify phase on each host (one agent call per host), report, and exit 0 only if
    every check passed (1 a check failed, 2 bad arguments, 3 a host unreachable)."""
    from ops.errors import UsageError
    from ops.inventory import resolve_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    if pick is not None and not [s for h in targets for s in pick(h)]:  # bad names fail here, early
        raise UsageError(f"verify.{kind}: nothing to check on {', '.join(h.name for h in targets)}",
                         "declare it in hosts.toml for the service (see README, verify)")
    _open_early(inv, targets)
    from ops import report
    from ops.session import on_hosts

    rep = report.Reporter(report.choose_format(as_json))
    with report.Board(rep, f"verify.{kind}", [h.name for h in targets], checks=kind == "all") as board:
        outcomes = on_hosts(inv, targets, lambda s: run(s, lambda e: board.event(s.host.name, e)))
    report.verify_result(rep, kind, outcomes)
    _exit_for(outcomes, lambda o: o.value.ok)


VERIFY_HELP = {"host": HOST_HELP, "json": JSON_HELP, "service": "the service to check",
               "no-persist": NO_PERSIST_HELP}
VERIFY_MANY_HELP = {**VERIFY_HELP, "service": SERVICE_HELP}


@task(name="tree", positional=["service"], help=VERIFY_HELP)
@errors_to_exit
def verify_tree(c, service, host=None, json=False, no_persist=False):
    """SERVICE runs under its supervisor (or its recorded pid lives), once; prints its tree."""
    _no_persist(no_persist)
    from ops import verify

    _verify("tree", host, json, lambda s, ev: verify.tree(s, [service], ev),
            lambda h: verify.tree_services(h, [service]))


@task(dry="refuse", name="restart", positional=["service"], help={
    **VERIFY_HELP,
    "service": "the supervised service to kill",
    "signal": "the signal that simulates the crash (default KILL)",
    "timeout": "seconds the supervisor has to bring it back and pass its gates (default 30)",
})
@errors_to_exit
def verify_restart(c, service, host=None, signal="KILL", timeout="30", json=False,
                   no_persist=False):
    """Kill SERVICE, wait for its supervisor to restart it and its gates to pass; time it."""
    _no_persist(no_persist)
    from ops import verify

    secs = number(timeout, "timeout")
    signal = verify.signal_name(signal)  # a bad --signal is refused before any host is touched
    _verify("restart", host, json,
            lambda s, ev: verify.restart(s, service, signal=signal, timeout=secs, on_event=ev),
            lambda h: [verify.restart_service(h, service)])


@task(name="orphans", iterable=["service"], help=VERIFY_MANY_HELP)
@errors_to_exit
def verify_orphans(c, host=None, service=None, json=False, no_persist=False):
    """No process matching a service's pattern runs outside its service's process tree."""
    _no_persist(no_persist)
    from ops import verify
    from ops.inventory import select_services

    names = _names(service)
    _verify("orphans", host, json, lambda s, ev: verify.orphans(s, names, ev),
            lambda h: select_services(h, names))


@task(name="health", iterable=["service"], help=VERIFY_MANY_HELP)
@errors_to_exit
def verify_health(c, host=None, service=None, json=False, no_persist=False):
    """Every declared health check, once, with its timing."""
    _no_persist(no_persist)
    from ops import verify

    names = _names(service)
    _verify("health", host, json, lambda s, ev: verify.health(s, names, ev),
            lambda h: verify.health_services(h, names))


@task(name="heartbeat", positional=["service"], help=VERIFY_HELP)
@errors_to_exit
def verify_heartbeat(c, service, host=None, json=False, no_persist=False):
    """SERVICE's heartbeat file is younger than its max_age."""
    _no_persist(no_persist)
    from ops import verify

    _verify("heartbeat", host, json, lambda s, ev: verify.heartbeat(s, [service], ev),
            lambda h: verify.heartbeat_services(h, [service]))


@task(name="watch", iterable=["service"], help={
    **VERIFY_HELP,
    "service": SERVICE_HELP,
    "seconds": "how long to watch (default 10)",
    "interval": "seconds between samples (default 1)",
    "min-mem-mb": "fail when MemAvailable falls below this (default: the host's min_mem_available_mb)",
})
@errors_to_exit
def verify_watch(c, host=None, service=None, seconds="10", interval="1", min_mem_mb=None, json=False,
                 no_persist=False):
    """Watch process counts and free memory: fail on too many, a growing count, or low memory."""
    _no_persist(no_persist)
    from ops import verify
    from ops.errors import UsageError
    from ops.inventory import select_services

    floor = number(min_mem_mb, "min-mem-mb") if min_mem_mb is not None else None
    secs, every = number(seconds, "seconds"), number(interval, "interval", minimum=0.05)
    if secs <= 0:
        raise UsageError(f"--seconds must be more than 0, got {seconds!r}")
    names = _names(service)
    _verify("watch", host, json,
            lambda s, ev: verify.watch(s, secs, names, floor, every, ev),
            lambda h: select_services(h, names))


@task(dry="refuse", name="all", help={"host": HOST_HELP, "json": JSON_HELP, "no-persist": NO_PERSIST_HELP})
@errors_to_exit
def verify_all(c, host=None, json=False, no_persist=False):
    """Every check hosts.toml declares for the host's services, in order (deploy's verify step)."""
    _no_persist(no_persist)
    from ops import verify

    _verify("all", host, json, lambda s, ev: verify.verify_all(s, ev))


verify = Collection("verify", verify_tree, verify_restart, verify_orphans, verify_health, verify_heartbeat,
                    verify_watch, verify_all)
ns.add_collection(verify)
