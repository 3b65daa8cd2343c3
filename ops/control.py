"""Service control as library calls: status, start, stop, restart, logs.

Each phase on a host is one agent call (one round trip), whatever the number of services.
Ordering is decided here from the inventory (pure functions); the agent executes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ops.inventory import Host, Service
from ops.session import HostSession

KILL_WAIT = 5.0
MARGIN = 30.0


def with_children(host: Host, names: list[str] | tuple[str, ...] | None) -> list[Service]:
    """The selected services plus the children they supervise, in start order."""
    if not names:
        return list(host.services)
    from ops.inventory import select_services

    chosen = {s.name for s in select_services(host, names)}
    grew = True
    while grew:
        grew = False
        for s in host.services:
            if s.supervised_by in chosen and s.name not in chosen:
                chosen.add(s.name)
                grew = True
    return [s for s in host.services if s.name in chosen]


def stop_order(services: list[Service]) -> list[Service]:
    """Reverse start order, except that a supervisor goes before its children (so it cannot
    respawn them while they are being stopped)."""
    names = {s.name for s in services}
    tops = [s for s in reversed(services) if not (s.supervised_by and s.supervised_by in names)]
    out: list[Service] = []

    def place(s: Service) -> None:
        out.append(s)
        for c in services:
            if c.supervised_by == s.name:
                place(c)

    for s in tops:
        place(s)
    return out


def start_timeout(services: list[Service]) -> float:
    return sum(s.ready.timeout + min(s.stop_timeout, 5.0) + KILL_WAIT for s in services) + MARGIN


def stop_timeout(services: list[Service]) -> float:
    return sum(2 * (s.stop_timeout + KILL_WAIT) for s in services) + MARGIN


@dataclass
class PhaseResult:
    """What one phase did on one host: per-service results from the agent."""

    host: str
    phase: str
    ok: bool
    services: list[dict[str, Any]] = field(default_factory=list)


def status(session: HostSession, names: list[str] | None = None, health: bool = True):
    services = with_children(session.host, names)
    args = session.service_args(services)
    args["health"] = health
    return session.call("status", args)["services"]


# `inv status` exit codes (like `systemctl is-active`: 0 only when everything is up). 0-3 keep
# their meaning for every task; the worst finding wins, in the order of STATUS_PRECEDENCE.
STATUS_OK = 0  # every selected service is running and healthy
STATUS_UNHEALTHY = 1  # running, but a health check failed or its port is not held by it
STATUS_UNREACHABLE = 3  # a host could not be asked
STATUS_STOPPED = 6  # stopped (by the user, never started, or finished)
STATUS_FAILED = 7  # should run but does not: dead, backoff (crashed, waiting), fatal
STATUS_UNKNOWN = 8  # cannot tell: a corrupt state file, or a process not started by the tool
STATUS_PRECEDENCE = (STATUS_UNREACHABLE, STATUS_FAILED, STATUS_UNKNOWN, STATUS_UNHEALTHY, STATUS_STOPPED)
_STATE_CODES = {"stopped": STATUS_STOPPED, "dead": STATUS_FAILED, "backoff": STATUS_FAILED,
                "fatal": STATUS_FAILED, "unknown": STATUS_UNKNOWN}


def service_code(row: dict[str, Any]) -> int:
    """The exit code one status row stands for."""
    if row["state"] != "running":
        return _STATE_CODES.get(row["state"], STATUS_UNKNOWN)
    health = row.get("health")
    if (health is not None and not health["ok"]) or row.get("port_ok") is False:
        return STATUS_UNHEALTHY
    return STATUS_OK


def status_code(outcomes: list[Any]) -> int:
    """`inv status`'s exit code for every host's rows (outcomes of on_hosts)."""
    found = {STATUS_UNREACHABLE if not o.ok else STATUS_OK for o in outcomes}
    for o in outcomes:
        if o.ok:
            found.update(service_code(row) for row in o.value)
    return next((c for c in STATUS_PRECEDENCE if c in found), STATUS_OK)


def start(session: HostSession, names: list[str] | None = None, on_event=None) -> PhaseResult:
    services = with_children(session.host, names)
    data = session.call(
        "start", session.service_args(services), on_event=on_event, timeout=start_timeout(services)
    )
    return PhaseResult(session.host.name, "start", data["ok"], data["services"])


def stop(session: HostSession, names: list[str] | None = None, on_event=None) -> PhaseResult:
    services = stop_order(with_children(session.host, names))
    data = session.call(
        "stop", session.service_args(services), on_event=on_event, timeout=stop_timeout(services)
    )
    return PhaseResult(session.host.name, "stop", data["ok"], data["services"])


def restart(session: HostSession, names: list[str] | None = None, on_event=None) -> PhaseResult:
    stopped = stop(session, names, on_event)
    if not stopped.ok:
        return PhaseResult(session.host.name, "restart", False, stopped.services)
    started = start(session, names, on_event)
    return PhaseResult(
        session.host.name,
        "restart",
        started.ok,
        [dict(r, phase="stop") for r in stopped.services]
        + [dict(r, phase="start") for r in started.services],
    )


def unit_services(host: Host, names: list[str] | None, what: str, persist: bool = False) -> list[Service]:
    """The selected services `inv enable/disable` (units) or `inv persist` (tool-run, with a cmd)
    act on; a UsageError naming the service otherwise. Pure."""
    from ops.errors import UsageError
    from ops.inventory import select_services

    chosen = [s for s in select_services(host, names) if not s.supervised]
    if persist:
        bad = [s for s in chosen if s.manager == "systemd" or s.cmd is None]
        if names and bad:
            raise UsageError(
                f"host '{host.name}': service '{bad[0].name}' is already a systemd unit; {what} writes a "
                "unit for a service the tool runs",
                f"`inv enable --service {bad[0].name}` enables it at boot",
            )
        return [s for s in chosen if s not in bad]
    if names:
        # a tool-run service named here may have been made a unit by `inv persist` (recorded on
        # the host): the agent decides, and refuses one that was not
        return chosen
    return [s for s in chosen if s.is_unit]


def systemctl_action(service: Service, verb: str) -> str:
    """What a phase does to a unit service, in systemctl's words (for plans). Pure."""
    scope = " --user" if service.scope == "user" else ""
    return f"systemctl{scope} {verb} {service.unit_name}"


def enable(session: HostSession, names: list[str] | None = None, on_event=None, now: bool = False,
           on: bool = True) -> PhaseResult:
    """`systemctl enable` (start at boot) the unit services; with now, start them too (gates)."""
    phase = "enable" if on else "disable"
    services = unit_services(session.host, names, phase)
    args = {**session.service_args(services), "enable": on, "now": now, "phase": phase}
    timeout = (start_timeout(services) if on else stop_timeout(services)) if now else MARGIN * 2
    data = session.call("unit_enable", args, on_event=on_event, timeout=timeout)
    return PhaseResult(session.host.name, phase, data["ok"], data["services"])


def disable(
    session: HostSession, names: list[str] | None = None, on_event=None, now: bool = False
) -> PhaseResult:
    return enable(session, names, on_event, now=now, on=False)


def persist(session: HostSession, names: list[str] | None = None, on_event=None,
            dry_run: bool = False) -> PhaseResult:
    """Write a unit for each tool-run service, daemon-reload, enable it; from then on systemd runs
    it (a running tool-run process is handed over: stopped, then the unit started with gates).
    dry_run: the unit files as they would be written, nothing changed."""
    services = unit_services(session.host, names, "persist", persist=True)
    args = {**session.service_args(services), "dry_run": dry_run, "phase": "persist"}
    timeout = start_timeout(services) + stop_timeout(services)
    data = session.call("unit_persist", args, on_event=on_event, timeout=timeout)
    return PhaseResult(session.host.name, "persist", data["ok"], data["services"])


def _log_args(session: HostSession, service: Service) -> dict[str, Any]:
    """Where the log is, and the specs whose secrets the agent redacts from its lines."""
    return {
        "path": service.log,
        "base": session.host.path,
        "service": service.to_agent(),
        "all_services": [s.to_agent() for s in session.host.services],
    }


def _journal(service: Service) -> bool:
    """A unit without a `log` key writes to its journal (a persisted one appends to its log file)."""
    return service.manager == "systemd" and not service.log_declared


def logs(session: HostSession, service: Service, lines: int) -> dict[str, Any]:
    """The last lines of a service's log (a unit's journal); the agent redacts the host's secrets."""
    if _journal(service):
        return session.call("unit_logs", {**_log_args(session, service), "host": session.host_args(),
                                          "lines": lines})
    return session.call("logs", {**_log_args(session, service), "lines": lines})


def follow(session: HostSession, service: Service, on_line, seconds: float | None = None):
    def handler(event: dict[str, Any]) -> None:
        if event.get("event") == "line":
            on_line(event["line"])

    if _journal(service):
        return session.call(
            "unit_logs",
            {**_log_args(session, service), "host": session.host_args(), "follow": True, "seconds": seconds},
            on_event=handler,
            timeout=(seconds + MARGIN) if seconds else 10 * 365 * 86400.0,
        )
    return session.call(
        "follow",
        {**_log_args(session, service), "seconds": seconds},
        on_event=handler,
        timeout=(seconds + MARGIN) if seconds else 10 * 365 * 86400.0,
    )
