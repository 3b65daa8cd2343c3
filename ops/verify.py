"""`verify.*`: the runbook's verification steps as checks that can fail.

The client half. Pure functions pick the services and build each phase's plan from the inventory
(tested by exact output); a thin layer sends the phase to the host as ONE agent call and returns
the results as data (``VerifyReport``). The checks run on the host, in ``ops/agent/checks.py``:

- tree: the service's process is in its supervisor's tree (or, unsupervised, its recorded pid
  lives), it runs once, and no copy runs elsewhere;
- restart: kill the supervised child, wait for a new one under the same supervisor, re-run its
  gates, report the time it took;
- orphans: no process matching a service's pattern runs outside its owner's tree;
- health: every declared health check once, timed;
- heartbeat: the heartbeat file is younger than max_age;
- instances: the number of processes matching the pattern is within max_instances (one sample);
- watch: counts and available memory sampled every second for a bounded time.

``verify_all(session)`` runs what hosts.toml declares for the host's services (``checks = [...]``,
else a non-destructive default), in order: the call meant for deploy's verify step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.errors import UsageError
from ops.inventory import VERIFY_CHECKS, Host, Service, select_services
from ops.session import HostSession

MARGIN = 30.0  # s added to every agent call's timeout, over what the checks may take
SNAPSHOT_COST = 5.0  # s allowed per process-table check (a slow `ps` without /proc)
DEFAULT_RESTART_TIMEOUT = 30.0
HEARTBEAT_TORN_WAIT = 2.0  # the agent's TORN_WAIT: a torn heartbeat is read again this long
DEFAULT_SIGNAL = "KILL"
DEFAULT_WATCH_SECONDS = 10.0
MB = 1024 * 1024
CHECKS = VERIFY_CHECKS  # what a service may list in `checks = [...]` (hosts.toml)

EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class VerifyReport:
    """What one verify phase found on one host. ``ok`` only if every check passed."""

    host: str
    kind: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # verify.watch only

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]

    def summary(self) -> str:
        """One line: how many checks passed, or which failed and why."""
        if not self.failed:
            return f"{len(self.checks)} check(s) passed"
        return f"{len(self.failed)} of {len(self.checks)} check(s) failed: " + "; ".join(
            f"{c['service'] or self.host} {c['name']}: {c['detail']}" for c in self.failed
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "ok": self.ok, "checks": self.checks}
        if self.kind == "watch":
            out["samples"] = self.samples
        return out


# --- choosing services (pure; UsageError names the host and what to do) ----------------------


def tree_services(host: Host, names: list[str] | None) -> list[Service]:
    """The named services (all when none) and the children they supervise, in start order."""
    from ops.control import with_children

    return with_children(host, names)


def signal_name(text: str) -> str:
    """--signal's value as the agent takes it ('sigkill' -> 'KILL', '9' -> '9'), or a UsageError."""
    import signal

    name = text.strip().upper().removeprefix("SIG")
    if not (name.isdigit() and int(name) > 0) and "SIG" + name not in signal.Signals.__members__:
        raise UsageError(f"--signal: unknown signal {text!r}", "e.g. KILL (the default), TERM, INT, HUP, "
                         "USR1, or a signal number")
    return name


def restart_service(host: Host, name: str) -> Service:
    """The supervised service to kill; a service nothing would restart is refused, not killed."""
    svc = select_services(host, [name])[0]
    if svc.supervised_by is None and svc.restart.policy == "no" and not svc.is_unit:
        children = [s.name for s in host.services if s.supervised_by or s.restart.policy != "no"]
        raise UsageError(
            f"host '{host.name}': service '{name}' has no supervisor (no supervised_by, no restart "
            "policy), so nothing would restart it: verify.restart did not kill it",
            (f"verify.restart tests a supervised child ({', '.join(children)}); " if children else "")
            + f"to restart '{name}' itself use `inv restart --service {name}`",
        )
    return svc


def _declaring(host: Host, names: list[str] | None, key: str, what: str) -> list[Service]:
    chosen = select_services(host, names)
    if names:
        lacking = [s.name for s in chosen if getattr(s, key) is None]
        if lacking:
            raise UsageError(
                f"host '{host.name}': service '{lacking[0]}' declares no {what}",
                f"add `{key} = {{ ... }}` to [services.{lacking[0]}] in hosts.toml",
            )
    return [s for s in chosen if getattr(s, key) is not None]


def health_services(host: Host, names: list[str] | None) -> list[Service]:
    return _declaring(host, names, "health", "health check")


def heartbeat_services(host: Host, names: list[str] | None) -> list[Service]:
    return _declaring(host, names, "heartbeat", "heartbeat")


def default_checks(service: Service) -> list[Any]:
    """The checks verify.all runs for a service: its declared `checks`, else the
    non-destructive default (tree, health, heartbeat, instances as declared, then orphans)."""
    if service.checks:
        return list(service.checks)
    out = ["tree"]
    if service.health is not None:
        out.append("health")
    if service.heartbeat is not None:
        out.append("heartbeat")
    if service.max_instances is not None:
        out.append("instances")
    out.append("orphans")
    return out


def plan_all(host: Host, restart_timeout: float = DEFAULT_RESTART_TIMEOUT) -> list[dict[str, Any]]:
    """verify.all's steps for a host, in the order a runbook's Verification section reads."""
    from ops.probes import Probe

    steps: list[dict[str, Any]] = []
    for svc in host.services:
        for check in default_checks(svc):
            if isinstance(check, Probe):  # cmd / file / tcp (ops/probes.py)
                steps.append(check.to_step(svc.name))
                continue
            step: dict[str, Any] = {"check": check, "service": svc.name}
            if check == "restart":
                step.update(signal=DEFAULT_SIGNAL, timeout=float(restart_timeout))
            steps.append(step)
    return steps


def steps_timeout(host: Host, steps: list[dict[str, Any]]) -> float:
    """An upper bound for the agent call that runs these steps (every wait on the host is bounded)."""
    total = MARGIN
    for step in steps:
        svc = host.service(step["service"])
        health = sum(h.timeout for h in svc.health_checks) or (svc.health.timeout if svc.health else 0.0)
        total += SNAPSHOT_COST + health
        if step["check"] == "heartbeat" and svc.heartbeat is not None:
            total += min(svc.heartbeat.max_age, HEARTBEAT_TORN_WAIT)  # torn reads are read again
        if step["check"] in ("cmd", "tcp"):  # probes (ops/probes.py)
            total += float(step.get("timeout") or 0)
        if step["check"] == "restart":
            total += float(step.get("timeout") or DEFAULT_RESTART_TIMEOUT) + health
    return total


def min_mem_bytes(host: Host, min_mem_mb: float | None) -> int | None:
    """The memory floor in bytes: the flag, else the host's min_mem_available_mb, else none."""
    mb = min_mem_mb if min_mem_mb is not None else host.min_mem_available_mb
    return int(float(mb) * MB) if mb else None


# --- running a phase (one agent call per host) -----------------------------------------------


def _call(
    session: HostSession,
    kind: str,
    services: list[Service],
    extra: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    timeout: float | None = None,
) -> VerifyReport:
    args = session.service_args(services)
    args.update(extra or {})
    if timeout is None:
        timeout = steps_timeout(session.host, [{"check": kind, "service": s.name} for s in services])
    data = session.call(f"verify_{kind}", args, on_event=on_event, timeout=timeout)
    return VerifyReport(session.host.name, kind, data["checks"], data.get("samples") or [])


def tree(session: HostSession, names: list[str] | None = None, on_event: EventHandler | None = None):
    return _call(session, "tree", tree_services(session.host, names), on_event=on_event)


def restart(
    session: HostSession,
    name: str,
    signal: str = DEFAULT_SIGNAL,
    timeout: float = DEFAULT_RESTART_TIMEOUT,
    on_event: EventHandler | None = None,
) -> VerifyReport:
    svc = restart_service(session.host, name)
    step = {"check": "restart", "service": svc.name, "timeout": timeout}
    return _call(
        session,
        "restart",
        [svc],
        {"signal": signal.upper().removeprefix("SIG"), "timeout": float(timeout)},
        on_event=on_event,
        timeout=steps_timeout(session.host, [step]),
    )


def orphans(session: HostSession, names: list[str] | None = None, on_event: EventHandler | None = None):
    return _call(session, "orphans", select_services(session.host, names), on_event=on_event)


def health(session: HostSession, names: list[str] | None = None, on_event: EventHandler | None = None):
    return _call(session, "health", health_services(session.host, names), on_event=on_event)


def heartbeat(session: HostSession, names: list[str] | None = None, on_event: EventHandler | None = None):
    return _call(session, "heartbeat", heartbeat_services(session.host, names), on_event=on_event)


def watch(
    session: HostSession,
    seconds: float = DEFAULT_WATCH_SECONDS,
    names: list[str] | None = None,
    min_mem_mb: float | None = None,
    interval: float = 1.0,
    on_event: EventHandler | None = None,
) -> VerifyReport:
    """Sample every `interval` s on the host for `seconds` (one call, one event per sample)."""
    if seconds <= 0 or interval <= 0:
        raise UsageError("verify.watch needs --seconds > 0 (and an interval > 0)")
    return _call(
        session,
        "watch",
        select_services(session.host, names),
        {
            "seconds": float(seconds),
            "interval": float(interval),
            "min_mem_bytes": min_mem_bytes(session.host, min_mem_mb),
        },
        on_event=on_event,
        timeout=seconds + interval + MARGIN + SNAPSHOT_COST,
    )


def verify_all(
    session: HostSession,
    on_event: EventHandler | None = None,
    restart_timeout: float = DEFAULT_RESTART_TIMEOUT,
) -> VerifyReport:
    """Every check hosts.toml declares for the host's services, in order, in one agent call.
    (`restart_timeout` bounds each declared restart check.)"""
    steps = plan_all(session.host, restart_timeout)
    args = session.service_args(list(session.host.services))
    args["steps"] = steps
    data = session.call("verify_all", args, on_event=on_event, timeout=steps_timeout(session.host, steps))
    return VerifyReport(session.host.name, "all", data["checks"])
