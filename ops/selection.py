"""Choosing hosts and services from the command line: `--host` (a name, a comma list, a group or
`all`) and `--service` (names; a supervisor's children come with it in ops.control)."""

from __future__ import annotations

import difflib

from ops.model import Host, Inventory, Service


def resolve_hosts(inv: Inventory, spec: str | None) -> list[Host]:
    """--host value -> hosts: a name, a comma list, a group, or 'all'. None: the only host."""
    from ops.errors import UsageError

    if not spec:
        if len(inv.hosts) == 1:
            return list(inv.hosts.values())
        raise UsageError(
            f"{inv.path} declares {len(inv.hosts)} hosts; say which with --host",
            f"hosts: {', '.join(inv.hosts)}; groups: {', '.join(inv.groups) or '(none)'}; or 'all'",
        )
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            names.extend(inv.hosts)
        elif part in inv.groups:
            names.extend(inv.groups[part])
        elif part in inv.hosts:
            names.append(part)
        else:
            close = difflib.get_close_matches(part, [*inv.hosts, *inv.groups], n=1)
            raise UsageError(
                f"no host or group named '{part}' in {inv.path}",
                (f"did you mean '{close[0]}'? " if close else "") + f"hosts: {', '.join(inv.hosts)}",
            )
    return [inv.hosts[n] for n in dict.fromkeys(names)]


def select_services(host: Host, names: list[str] | tuple[str, ...] | None) -> list[Service]:
    """Named services of a host in the host's order; all of them when names is empty."""
    from ops.errors import UsageError

    if not names:
        return list(host.services)
    unknown = [n for n in names if n not in host.service_names]
    if unknown:
        raise UsageError(
            f"host '{host.name}' has no service named '{unknown[0]}'",
            f"its services: {', '.join(host.service_names)}",
        )
    return [s for s in host.services if s.name in names]
