"""Invoke tasks: thin wiring from command-line flags to library calls and the reporter.

Nothing heavy is imported at module level (no fabric, paramiko or rich), so `inv --list` is fast;
each task imports what it needs when it runs. Only tasks turn errors into exit codes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from invoke import Collection, Exit, task

HOST_HELP = "host name, comma list, group, or 'all' (default: the only host)"
SERVICE_HELP = "a service name (repeatable, or comma list); default: all services of the host"
JSON_HELP = "print JSON instead of a table"


def _inventory(c: Any = None):
    from ops import inventory

    path = os.environ.get("OPS_INVENTORY") or "hosts.toml"
    return inventory.load(path)


def _names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def errors_to_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """OpsError -> one clear message on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ops.errors import OpsError
        from ops.report import Reporter

        try:
            return fn(*args, **kwargs)
        except OpsError as exc:
            Reporter().error(exc)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def _exit_for(outcomes: list[Any], ok: Callable[[Any], bool]) -> None:
    codes = [o.error.exit_code for o in outcomes if not o.ok]
    if codes or not all(ok(o) for o in outcomes if o.ok):
        raise Exit(code=max(codes) if codes and all(o.ok is False for o in outcomes) else 1)


@task(auto_shortflags=False, help={"json": JSON_HELP})
@errors_to_exit
def hosts(c, json=False):
    """List hosts and services, validating the inventory."""
    from ops.report import Reporter, choose_format

    inv = _inventory(c)
    Reporter(choose_format(json)).hosts(inv)


@task(
    auto_shortflags=False,
    iterable=["service"],
    help={
        "host": HOST_HELP,
        "service": SERVICE_HELP,
        "json": JSON_HELP,
        "no-health": "skip the HTTP health checks",
    },
)
@errors_to_exit
def status(c, host=None, service=None, json=False, no_health=False):
    """Show each service's state, pid, uptime, port holder and health."""
    from ops import control
    from ops.inventory import resolve_hosts
    from ops.report import Reporter, choose_format
    from ops.session import on_hosts

    inv = _inventory(c)
    targets = resolve_hosts(inv, host)
    names = _names(service)
    outcomes = on_hosts(inv, targets, lambda s: control.status(s, names, health=not no_health))
    Reporter(choose_format(json)).status(outcomes)
    if any(not o.ok for o in outcomes):
        raise Exit(code=3)


def _phase(phase: str, host: str | None, service: list[str] | None, as_json: bool) -> None:
    from ops import control
    from ops.inventory import resolve_hosts
    from ops.report import Reporter, choose_format
    from ops.session import on_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    names = _names(service)
    for h in targets:  # fail early on an unknown service name, before touching any host
        control.with_children(h, names)
    rep = Reporter(choose_format(as_json))

    def run(session):
        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "service":
                rep.service_event(session.host.name, event["result"], event["phase"])

        return getattr(control, phase)(session, names, on_event=on_event)

    outcomes = on_hosts(inv, targets, run)
    rep.phase(phase, outcomes)
    _exit_for(outcomes, lambda o: o.value.ok)


PHASE_HELP = {"host": HOST_HELP, "service": SERVICE_HELP, "json": JSON_HELP}


@task(auto_shortflags=False, iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def start(c, host=None, service=None, json=False):
    """Start services in dependency order; each passes its gates or is rolled back."""
    _phase("start", host, service, json)


@task(auto_shortflags=False, iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def stop(c, host=None, service=None, json=False):
    """Stop services (supervisors first), escalate to KILL, sweep orphans, prove none left."""
    _phase("stop", host, service, json)


@task(auto_shortflags=False, iterable=["service"], help=PHASE_HELP)
@errors_to_exit
def restart(c, host=None, service=None, json=False):
    """Stop then start services, with the same gates as start."""
    _phase("restart", host, service, json)


@task(
    auto_shortflags=False,
    positional=["service"],
    help={
        "service": "the service whose log to show",
        "host": HOST_HELP,
        "n": "how many lines (default 50)",
        "follow": "stream new lines until Ctrl-C",
        "json": JSON_HELP,
    },
)
@errors_to_exit
def logs(c, service, host=None, n=50, follow=False, json=False):
    """Print the last lines of a service's log (--follow streams until Ctrl-C)."""
    from ops import control
    from ops.errors import UsageError
    from ops.inventory import resolve_hosts
    from ops.report import Reporter, choose_format
    from ops.session import connect

    inv = _inventory(c)
    targets = resolve_hosts(inv, host)
    if len(targets) != 1:
        raise UsageError("logs needs exactly one host", "pass --host NAME")
    h = targets[0]
    svc = control.with_children(h, [service])[0]
    rep = Reporter(choose_format(json))
    with connect(inv, h) as session:
        rep.log_lines(h.name, svc.name, control.logs(session, svc, int(n)))
        if follow:
            control.follow(session, svc, rep.follow_line)


ns = Collection()
for t in (hosts, status, start, stop, restart, logs):
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
}


def _deploy(host, json, rollback_only=False, **opts):
    from ops import deploy as dep
    from ops import report
    from ops.inventory import resolve_hosts

    inv = _inventory()
    targets = resolve_hosts(inv, host)
    rep = report.Reporter(report.choose_format(json))
    options = dep.DeployOptions(**opts)
    results = dep.deploy(inv, targets, options, on_step=lambda h, st: report.deploy_step(rep, h, st),
                         rollback_only=rollback_only)
    report.deploy_summary(rep, results)
    code = dep.exit_code(results)
    if code:
        raise Exit(code=code)


@task(auto_shortflags=False, help=DEPLOY_HELP)
@errors_to_exit
def deploy(c, host=None, dry_run=False, no_rollback=False, lock_wait=0.0, serial=0, max_fail=-1,
           allow_dirty=False, ref="HEAD", json=False):
    """Deploy: lock, deliver code, purge caches, ordered stop/start, verify, roll back on failure."""
    _deploy(host, json, dry_run=dry_run, rollback=not no_rollback, lock_wait=float(lock_wait),
            serial=int(serial) or None, max_fail=None if int(max_fail) < 0 else int(max_fail),
            allow_dirty=allow_dirty, ref=ref)


@task(auto_shortflags=False, help={"host": HOST_HELP, "dry-run": "show the plan only", "json": JSON_HELP,
                                   "lock-wait": DEPLOY_HELP["lock-wait"]})
@errors_to_exit
def rollback(c, host=None, dry_run=False, lock_wait=0.0, json=False):
    """Roll back to the commit deployed before the current one (recorded on the host)."""
    _deploy(host, json, rollback_only=True, dry_run=dry_run, lock_wait=float(lock_wait))


@task(auto_shortflags=False, help={"host": HOST_HELP, "force": "break the lock even if its holder runs"})
@errors_to_exit
def unlock(c, host=None, force=False):
    """Break a stale deploy lock (one whose deploy is gone)."""
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


@task(auto_shortflags=False, help={"host": HOST_HELP, "n": "how many runs (default 20)", "json": JSON_HELP})
@errors_to_exit
def journal(c, host=None, n=20, json=False):
    """Show the last deploy runs recorded on a host."""
    from ops import deploy as dep
    from ops import report
    from ops.inventory import resolve_hosts
    from ops.session import connect

    inv = _inventory()
    rep = report.Reporter(report.choose_format(json))
    for h in resolve_hosts(inv, host):
        with connect(inv, h) as session:
            report.journal(rep, h.name, dep.journal(session, int(n)))


for t in (deploy, rollback, unlock, journal):
    ns.add_task(t)
