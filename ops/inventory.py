"""hosts.toml -> the frozen dataclasses of ops/model.py, with validation errors that name the file,
the table and the key. The model lives in ops/model.py, value rules in ops/inventory_values.py,
host/service selection in ops/selection.py; this module reads, checks and builds.

The inventory declares hosts and services. Services are defined once under ``[services.NAME]`` and
listed by hosts; a host may override a service's keys under ``[hosts.H.overrides.NAME]`` (e.g. a
port), and string values may use ``${port}``, ``${port:OTHER}``, ``${path}``, ``${host}`` and
``${state_dir}``, resolved per host. Nothing here touches the network or the host.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ops import inventory_values as values
from ops.agent.ownership import default_match, resolve_argv
from ops.errors import InventoryError
from ops.hooks import Hook  # noqa: F401 (re-exported)
from ops.model import (  # noqa: F401 (the model, re-exported: `from ops.inventory import Host` keeps working)
    DEFAULT_BUILD_TIMEOUT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PREFLIGHT_TEST_TIMEOUT,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    PREFLIGHT_RUNNERS,
    SIGNALS,
    BuildStep,
    Health,
    Heartbeat,
    Host,
    Inventory,
    Preflight,
    PreflightTest,
    Ready,
    Restart,
    Service,
)
from ops.preflight_config import _build_preflight
from ops.probes import Probe  # noqa: F401 (re-exported)
from ops.schema import (  # noqa: F401 (VERIFY_CHECKS and the key tables are re-exported)
    _NAME_RE,
    _UNIT_RE,
    _VAR_RE,
    DEFAULT_KEYS,
    HEALTH_KEYS,
    HEARTBEAT_KEYS,
    HOST_KEYS,
    MANAGERS,
    NEVER_MATCHES,
    READY_KEYS,
    SERVICE_KEYS,
    SSH_KEYS,
    SSH_TRANSPORTS,
    TOP_KEYS,
    UNIT_SCOPES,
    VERIFY_CHECKS,
    Checker,
    _Ctx,
    _describe,
    _expand_local,
    _is_num,
    _is_str,
    _is_str_list,
)
from ops.selection import resolve_hosts, select_services  # noqa: F401 (re-exported)

# --- loading ------------------------------------------------------------------------------------


def default_path() -> str:
    """$OPS_INVENTORY, else ./hosts.toml."""
    return os.environ.get("OPS_INVENTORY") or "hosts.toml"


def load(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Read and validate an inventory file; raise InventoryError on anything wrong."""
    p = Path(path if path is not None else default_path())
    shown = str(p)
    try:
        raw_bytes = p.read_bytes()
    except FileNotFoundError:
        raise InventoryError(
            shown,
            "",
            "no such inventory file",
            "create hosts.toml here, or pass --inventory PATH / set OPS_INVENTORY",
        ) from None
    except OSError as exc:
        raise InventoryError(shown, "", f"cannot read it: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InventoryError(shown, "", f"is not valid TOML: {exc}") from None
    return parse(data, shown, base_dir=p.resolve().parent)


def parse(data: Mapping[str, Any], path: str, base_dir: Path | None = None) -> Inventory:
    """Validate parsed TOML data and build the Inventory."""
    ctx = _Ctx(path)
    ctx.check_table("", data, TOP_KEYS)
    values.finite_numbers(ctx.fail, "", data)
    base = base_dir or Path.cwd()

    ssh = dict(data.get("ssh", {}))
    ctx.check_table("ssh", ssh, SSH_KEYS)
    if ssh.get("persist", 0) < 0:
        raise ctx.fail("ssh", f"key 'persist' must be 0 (off) or a number of seconds, got {ssh['persist']}")
    if ssh.get("transport", "paramiko") not in SSH_TRANSPORTS:
        raise ctx.fail("ssh", f"key 'transport' must be one of {', '.join(map(repr, SSH_TRANSPORTS))}, "
                              f"got {ssh['transport']!r}")
    defaults = dict(data.get("defaults", {}))
    ctx.check_table("defaults", defaults, DEFAULT_KEYS)
    values.defaults(ctx.fail, defaults)
    _check_timeouts(ctx, "defaults", defaults, tuple(k for k in DEFAULT_KEYS if k.endswith("_timeout")))

    services_raw: dict[str, Any] = dict(data.get("services", {}))
    for name, table in services_raw.items():
        where = f"services.{name}"
        if not _NAME_RE.match(name):
            raise ctx.fail(where, f"'{name}' is not a valid service name", "use letters, digits, _ . -")
        if not isinstance(table, dict):
            raise ctx.fail(where, f"must be a table, got {_describe(table)}")
        _check_service_table(ctx, where, table)
        values.self_reference(ctx.fail, where, name, table)
        values.service_merged(ctx.fail, lambda _key, where=where: where, table)
    _check_references(ctx, services_raw)

    hosts_raw: dict[str, Any] = dict(data.get("hosts", {}))
    if not hosts_raw:
        raise ctx.fail("hosts", "no hosts are declared", "add a [hosts.NAME] table")
    hosts: dict[str, Host] = {}
    for name, table in hosts_raw.items():
        where = f"hosts.{name}"
        if not _NAME_RE.match(name):
            raise ctx.fail(where, f"'{name}' is not a valid host name", "use letters, digits, _ . -")
        if not isinstance(table, dict):
            raise ctx.fail(where, f"must be a table, got {_describe(table)}")
        hosts[name] = _build_host(ctx, name, table, services_raw, defaults, base)

    groups: dict[str, tuple[str, ...]] = {}
    for gname, members in dict(data.get("groups", {})).items():
        where = f"groups.{gname}"
        if not _is_str_list(members):
            raise ctx.fail("groups", f"key '{gname}' must be a list of host names")
        values.group(ctx.fail, gname, members)
        if gname in hosts or gname == "all":
            raise ctx.fail(where, f"group '{gname}' has the name of a host (or 'all')", "rename it")
        for member in members:
            if member not in hosts:
                raise ctx.fail(
                    "groups",
                    f"key '{gname}' names host '{member}', which is not defined",
                    f"defined hosts: {', '.join(sorted(hosts))}",
                )
        groups[gname] = tuple(members)

    if "hooks" in data or any("hooks" in t for t in hosts_raw.values()):  # deploy hooks (ops/hooks.py)
        from dataclasses import replace

        from ops import hooks as hook_mod

        defs = hook_mod.parse_definitions(data.get("hooks", {}), ctx.fail, str(base))
        for hname, table in hosts_raw.items():
            if "hooks" in table:
                h = hosts[hname]
                points = hook_mod.parse_points(table["hooks"], f"hosts.{hname}", defs, ctx.fail,
                                               {"host": hname, "path": h.path, "state_dir": h.state_dir})
                hosts[hname] = replace(h, hooks=points)

    if any(h.ssh is not None for h in hosts.values()):  # only SSH hosts read the ssh_config
        values.ssh_section(ctx.fail, ssh, _expand_local(ssh["config"], base) if "config" in ssh else None)
    preflight = _build_preflight(ctx, data.get("preflight", {}), hosts, groups, base)
    return Inventory(
        path=path,
        hosts=hosts,
        groups=groups,
        ssh_config=_expand_local(ssh["config"], base) if "config" in ssh else None,
        known_hosts=_expand_local(ssh["known_hosts"], base) if "known_hosts" in ssh else None,
        preflight=preflight,
        persist=float(ssh.get("persist", 0)),
        transport=ssh.get("transport", "paramiko"),
    )


def _check_service_table(ctx: _Ctx, where: str, table: Mapping[str, Any], partial: bool = False) -> None:
    """Keys, types and values of a service table. ``partial``: a host's overrides, whose
    sub-tables are merged into the service's, so required keys may come from the service."""
    ctx.check_table(where, table, SERVICE_KEYS)
    for sub, schema in (("ready", READY_KEYS), ("health", HEALTH_KEYS), ("heartbeat", HEARTBEAT_KEYS)):
        for i, t in enumerate(_health_list(table[sub]) if sub == "health" and sub in table else
                              [table[sub]] if sub in table else []):
            suffix = f"[{i}]" if isinstance(table[sub], list) else ""
            ctx.check_table(f"{where}.{sub}{suffix}", t, schema)
    if not partial:
        _check_required(ctx, where, table)
    if "stop_signal" in table and table["stop_signal"].upper().removeprefix("SIG") not in SIGNALS:
        raise ctx.fail(where, f"key 'stop_signal' is not one of {', '.join(SIGNALS)}")
    if "restart" in table and table["restart"] not in ("no", "on-failure", "always"):
        raise ctx.fail(where, 'key \'restart\' must be "no", "on-failure" or "always"')
    _check_unit_keys(ctx, where, table)
    _check_timeouts(ctx, where, table, ("stop_timeout",))
    if table.get("max_restarts", 0) < 0:
        raise ctx.fail(where, f"key 'max_restarts' must be 0 or more, got {table['max_restarts']}")
    if "ready" in table:
        _check_timeouts(ctx, f"{where}.ready", table["ready"], ("timeout",))
    for i, h in enumerate(_health_list(table.get("health"))):
        _check_timeouts(ctx, f"{where}.health" + (f"[{i}]" if isinstance(table["health"], list) else ""),
                        h, ("timeout",))
    port = table.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ctx.fail(where, f"key 'port' must be between 1 and 65535, got {port}")
    values.service(ctx.fail, where, table)


def _health_list(value: Any) -> list[Mapping[str, Any]]:
    """`health` as a list: one table, or several (`health = [{...}, {...}]`)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _check_unit_keys(ctx: _Ctx, where: str, table: Mapping[str, Any]) -> None:
    """manager / unit / scope / persist: systemd units (ops/agent/systemd.py)."""
    manager = table.get("manager", "tool")
    if manager not in MANAGERS:
        raise ctx.fail(where, f"key 'manager' must be \"tool\" or \"systemd\", got {manager!r}")
    if "scope" in table and table["scope"] not in UNIT_SCOPES:
        raise ctx.fail(where, f"key 'scope' must be \"system\" or \"user\", got {table['scope']!r}")
    if "unit" in table and not _UNIT_RE.match(table["unit"]):
        raise ctx.fail(where, f"key 'unit' must name a service unit (like \"worker.service\"), "
                       f"got {table['unit']!r}")
    is_unit = manager == "systemd" or table.get("persist", False)
    for key in ("unit", "scope"):
        if key in table and not is_unit:
            raise ctx.fail(where, f"key '{key}' applies to systemd units only",
                           'set manager = "systemd" (systemd runs it) or persist = true (the tool writes '
                           "the unit)")
    if manager == "systemd" and table.get("persist"):
        raise ctx.fail(where, 'has both manager = "systemd" and persist = true',
                       "persist writes a unit for a service the tool runs; a systemd service has its unit")
    if manager == "systemd":
        for key in ("restart", "backoff", "backoff_max", "stable_after", "breaker", "min_uptime", "heartbeat",
                    "supervised_by"):
            if key in table:
                raise ctx.fail(where, f"key '{key}' does not apply to manager = \"systemd\"",
                               "systemd runs it: restart policy, limits and supervision are in the unit "
                               "(Restart=, RestartSec=, StartLimitBurst=)")


def _check_required(ctx: _Ctx, where: str, table: Mapping[str, Any]) -> None:
    checks = _health_list(table.get("health"))
    for i, h in enumerate(checks):
        hwhere = f"{where}.health" + (f"[{i}]" if isinstance(table["health"], list) else "")
        if "url" not in h:
            raise ctx.fail(hwhere, "missing key 'url'", "give the URL to check")
        if len(checks) > 1 and "name" not in h:
            raise ctx.fail(hwhere, "missing key 'name'", "several health checks: name each one")
    names = [h.get("name", "health") for h in checks]
    if len(set(names)) != len(names):
        raise ctx.fail(f"{where}.health", "two health checks have the same name")
    if "heartbeat" in table:
        for key in ("file", "max_age"):
            if key not in table["heartbeat"]:
                raise ctx.fail(f"{where}.heartbeat", f"missing key '{key}'")


def _check_references(ctx: _Ctx, services_raw: Mapping[str, Any]) -> None:
    """children / supervised_by / after / depends_on must name defined services (even when no host
    runs the service yet: a typo should not wait for the day a host lists it)."""
    for name, table in services_raw.items():
        for key in ("children", "after", "depends_on"):
            for other in table.get(key, []):
                if other not in services_raw:
                    close = difflib.get_close_matches(other, list(services_raw), n=1)
                    raise ctx.fail(
                        f"services.{name}",
                        f"key '{key}' names '{other}', which is not defined"
                        + (f" (did you mean '{close[0]}'?)" if close else ""),
                        f"add a [services.{other}] table",
                    )
        declared = table.get("supervised_by")
        if declared is not None and declared not in services_raw:
            raise ctx.fail(
                f"services.{name}",
                f"key 'supervised_by' names '{declared}', which is not defined",
                f"add a [services.{declared}] table",
            )


def _check_timeouts(ctx: _Ctx, where: str, table: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in table and table[key] <= 0:
            raise ctx.fail(where, f"key '{key}' must be a positive number of seconds, got {table[key]}")


def _build_host(
    ctx: _Ctx,
    name: str,
    table: Mapping[str, Any],
    services_raw: Mapping[str, Any],
    defaults: Mapping[str, Any],
    base: Path,
) -> Host:
    where = f"hosts.{name}"
    ctx.check_table(where, table, HOST_KEYS)
    _check_timeouts(ctx, where, table, ("connect_timeout", "command_timeout"))
    values.host(ctx.fail, where, table)
    is_local = table.get("local", False)
    if is_local and "ssh" in table:
        raise ctx.fail(where, "has both 'local = true' and 'ssh'", "a host is either local or SSH")
    if not is_local and "ssh" not in table:
        raise ctx.fail(where, "missing key 'ssh'", 'set ssh = "alias" (or user@host:port), or local = true')
    if "path" not in table:
        raise ctx.fail(where, "missing key 'path'", "give the checkout directory on the host")
    source = table.get("source", "push")
    if source not in ("push", "pull"):
        raise ctx.fail(where, f'key \'source\' must be "push" or "pull", got {source!r}')
    path = table["path"]
    if is_local and not path.startswith(("/", "~")):
        path = str(base / path)
    root = path
    layout = table.get("layout", "in-place")
    if layout not in ("in-place", "releases"):
        raise ctx.fail(where, f'key \'layout\' must be "in-place" or "releases", got {layout!r}')
    if layout == "in-place" and ("shared" in table or "keep" in table):
        raise ctx.fail(where, "keys 'shared' and 'keep' need layout = \"releases\"",
                       'set layout = "releases", or remove them')
    if table.get("keep", 1) < 1:
        raise ctx.fail(where, f"key 'keep' must be 1 or more, got {table['keep']}")
    for item in table.get("shared", []):
        parts = item.split("/")
        if not item or item.startswith(("/", "~")) or ".." in parts or item in (".", "current"):
            raise ctx.fail(where, f"key 'shared' lists {item!r}: give paths relative to a release, "
                                  "without '..'")
    if layout == "releases":
        path = root.rstrip("/") + "/current"  # what the services run in (${path}, default cwd)
    state_dir = table.get("state_dir", f"~/.local/state/ops/{name}")
    if is_local and not state_dir.startswith(("/", "~")):
        state_dir = str(base / state_dir)

    overrides = dict(table.get("overrides", {}))
    wanted = list(table.get("services", []))
    for svc in wanted:
        if svc not in services_raw:
            raise ctx.fail(
                where,
                f"key 'services' names '{svc}', which is not defined",
                f"add a [services.{svc}] table, or remove it from the list",
            )
    for svc, otable in overrides.items():
        owhere = f"{where}.overrides.{svc}"
        if svc not in services_raw:
            raise ctx.fail(owhere, f"overrides service '{svc}', which is not defined")
        if not isinstance(otable, dict):
            raise ctx.fail(owhere, f"must be a table, got {_describe(otable)}")
        _check_service_table(ctx, owhere, otable, partial=True)

    # A supervisor's children come with it.
    names: list[str] = []
    pending = list(wanted)
    while pending:
        svc = pending.pop(0)
        if svc in names:
            continue
        names.append(svc)
        for child in services_raw[svc].get("children", []):
            if child not in services_raw:
                raise ctx.fail(
                    f"services.{svc}",
                    f"key 'children' names '{child}', which is not defined",
                    f"add a [services.{child}] table",
                )
            pending.append(child)

    for svc in overrides:
        if svc not in names:
            raise ctx.fail(
                f"{where}.overrides.{svc}",
                f"overrides service '{svc}', which host '{name}' does not run",
                f"add '{svc}' to hosts.{name}.services, or remove the override",
            )
    merged = {svc: _merge(services_raw[svc], overrides.get(svc, {})) for svc in names}
    for svc in names:
        if svc in overrides:
            _check_required(ctx, f"{where}.overrides.{svc}", merged[svc])
        own = overrides.get(svc, {})

        def where_of(key: str, svc: str = svc, own: Mapping[str, Any] = own) -> str:
            return f"{where}.overrides.{svc}" if key in own else f"services.{svc}"

        values.service_merged(ctx.fail, where_of, merged[svc])
    ports = {svc: merged[svc].get("port") for svc in names}
    variables = {"host": name, "path": path, "state_dir": state_dir}

    supervisors: dict[str, str] = {}
    for svc in names:
        for child in merged[svc].get("children", []):
            if child in supervisors and supervisors[child] != svc:
                raise ctx.fail(f"services.{child}", f"is a child of both '{supervisors[child]}' and '{svc}'")
            supervisors[child] = svc
    for svc in names:
        declared = merged[svc].get("supervised_by")
        if declared is None:
            continue
        if declared not in services_raw:
            raise ctx.fail(f"services.{svc}", f"key 'supervised_by' names '{declared}', which is not defined")
        if declared not in names:
            raise ctx.fail(
                where,
                f"service '{svc}' is supervised by '{declared}', which this host does not run",
                f"add '{declared}' to hosts.{name}.services",
            )
        if svc in supervisors and supervisors[svc] != declared:
            raise ctx.fail(
                f"services.{svc}",
                f"key 'supervised_by' says '{declared}' but '{supervisors[svc]}' lists it as a child",
            )
        supervisors[svc] = declared

    built: dict[str, Service] = {}
    for svc in names:
        built[svc] = _build_service(
            ctx, svc, merged[svc], supervisors.get(svc), names, ports, variables, defaults, overrides.get(svc)
        )

    seen_ports: dict[int, str] = {}
    for svc in names:
        port = built[svc].port
        if port is None:
            continue
        if port in seen_ports:
            raise ctx.fail(
                where,
                f"services '{seen_ports[port]}' and '{svc}' both use port {port}",
                f"give one of them another port (hosts.{name}.overrides.{svc}.port)",
            )
        seen_ports[port] = svc

    _check_overlaps(ctx, where, built)
    order = _start_order(ctx, where, built)
    connect_timeout = table.get("connect_timeout", defaults.get("connect_timeout"))
    command_timeout = table.get("command_timeout", defaults.get("command_timeout"))
    return Host(
        name=name,
        ssh=None if is_local else table["ssh"],
        path=path,
        source=source,
        services=tuple(built[s] for s in order),
        state_dir=state_dir,
        python=table.get("python", defaults.get("python", "python3")),
        connect_timeout=float(DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout),
        command_timeout=float(DEFAULT_COMMAND_TIMEOUT if command_timeout is None else command_timeout),
        branch=table.get("branch"),
        remote=table.get("remote", "origin"),
        min_mem_available_mb=_min_mem(ctx, where, table),
        build=build_steps(ctx, where, table.get("build", []), None,
                          lambda v: _substitute(ctx, where, "build", v, ports, variables, name, shell=True)),
        layout=layout,
        root=root,
        shared=tuple(table.get("shared", [])),
        keep=table.get("keep", 5),
    )


def command_line(service: Service) -> str | None:
    """A service's command line as its process will show it (relative paths resolved under its
    cwd as far as the client can tell: the host's ~ is not expanded here)."""
    if service.cmd is None:
        return None
    try:
        return " ".join(resolve_argv(shlex.split(service.cmd), service.cwd, exists=lambda _p: True))
    except ValueError:
        return None


def _check_overlaps(ctx: _Ctx, where: str, built: Mapping[str, Service]) -> None:
    """Refuse patterns that match another service's command line on the same host: a stop of one
    would sweep the other, a count would count both. `match_overlaps` says it is intended."""
    for name, svc in built.items():
        for other in svc.match_overlaps:
            if other not in built:
                raise ctx.fail(
                    f"services.{name}",
                    f"key 'match_overlaps' names '{other}', which is not a service of this host",
                )
        rx = re.compile(svc.match)
        for other_name, other in built.items():
            if other_name == name or other_name in svc.match_overlaps:
                continue
            line = command_line(other)
            if line is not None and rx.search(line):
                raise ctx.fail(
                    f"services.{name}",
                    f"its pattern /{svc.match}/ also matches the command line of service "
                    f"'{other_name}' ({line}) on host '{where.removeprefix('hosts.')}': stopping one "
                    "would sweep the other",
                    f"make 'match' more precise (anchor it with ^ and $), or, if this is intended, set "
                    f"match_overlaps = [\"{other_name}\"] in [services.{name}]",
                )


def _min_mem(ctx: _Ctx, where: str, table: Mapping[str, Any]) -> float | None:
    value = table.get("min_mem_available_mb")
    if value is not None and value <= 0:
        raise ctx.fail(where, f"key 'min_mem_available_mb' must be a positive number of MB, got {value}")
    return value


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A service table with a host's overrides on top; sub-tables (ready, health, env...) are
    merged key by key, so `overrides.api.ready.timeout = 60` keeps the service's ready.log."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _substitute(
    ctx: _Ctx,
    where: str,
    key: str,
    value: str,
    ports: Mapping[str, int | None],
    variables: Mapping[str, str],
    own: str,
    regex: bool = False,
    shell: bool = False,
) -> str:
    """Fill in ${...}; in a regex (`match`) the values are escaped, so a path's dots stay dots; in
    a command run by sh (build steps, a `cmd` check given as a string) they are shell-quoted, so a
    path with a space or a `;` stays one word."""

    def repl(m: re.Match[str]) -> str:
        value = _value(m)
        if regex:
            return re.escape(value)
        return shlex.quote(value) if shell else value

    def _value(m: re.Match[str]) -> str:
        var, arg = m.group(1), m.group(2)
        if var == "port":
            target = arg or own
            if target not in ports:
                host = variables["host"]
                raise ctx.fail(
                    where,
                    f"key '{key}' uses ${{port:{target}}} but '{target}' is not a service of host '{host}'",
                    f"add '{target}' to hosts.{host}.services",
                )
            port = ports[target]
            if port is None:
                raise ctx.fail(
                    where,
                    f"key '{key}' uses the port of '{target}', which declares no port",
                    f"set port in [services.{target}]",
                )
            return str(port)
        if arg is None and var in variables:
            return variables[var]
        known = "${port}, ${port:SERVICE}, " + ", ".join(f"${{{v}}}" for v in variables)
        raise ctx.fail(where, f"key '{key}' uses unknown variable {m.group(0)}", f"known: {known}")

    return _VAR_RE.sub(repl, value)


def _build_service(
    ctx: _Ctx,
    name: str,
    t: Mapping[str, Any],
    supervised_by: str | None,
    names: list[str],
    ports: Mapping[str, int | None],
    variables: Mapping[str, str],
    defaults: Mapping[str, Any],
    override: Mapping[str, Any] | None = None,
) -> Service:
    where = f"services.{name}"

    def origin(key: str) -> str:
        """The table a (dotted) key came from: the host's overrides or the service itself."""
        node: Any = override or {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return where
            node = node[part]
        return f"hosts.{variables['host']}.overrides.{name}"

    def sub(key: str, value: str, regex: bool = False, shell: bool = False) -> str:
        return _substitute(ctx, origin(key), key, value, ports, variables, name, regex, shell)

    cmd = sub("cmd", t["cmd"]) if "cmd" in t else None
    if t.get("persist") and cmd is None:
        raise ctx.fail(where, "key 'persist' is true but there is no 'cmd' to write the unit from",
                       "give cmd, or use manager = \"systemd\" for a unit that exists already")
    if supervised_by is None and cmd is None and t.get("manager") != "systemd":
        raise ctx.fail(
            where,
            "missing key 'cmd'",
            "give the command that starts it, or declare it supervised_by the service that does",
        )
    if supervised_by is not None and cmd is not None:
        raise ctx.fail(
            origin("cmd"),
            f"has a 'cmd' but is started by its supervisor '{supervised_by}'",
            "remove cmd; give 'match' so its processes can be found",
        )
    match_default = "match" not in t
    cwd = sub("cwd", t["cwd"]) if "cwd" in t else variables["path"]
    if "match" in t:
        match = ctx.regex(origin("match"), "match", sub("match", t["match"], regex=True))
    elif cmd is None and t.get("manager") == "systemd":
        match = NEVER_MATCHES  # its processes are its cgroup's; no pattern to look for elsewhere
    elif cmd is not None:
        # the command line as the process shows it: argv joined by single spaces (quotes gone),
        # relative paths resolved under its cwd, anchored at both ends. The agent recomputes it
        # with the paths as the host expands them (~), checking that they exist.
        try:
            match = default_match(resolve_argv(shlex.split(cmd), cwd, exists=lambda _p: True))
        except ValueError as exc:
            raise ctx.fail(where, f"key 'cmd' cannot be parsed: {exc}", "check its quotes") from None
    else:
        raise ctx.fail(
            where,
            "missing key 'match'",
            "a supervised service needs a pgrep -f pattern to find its process",
        )

    for key in ("after", "depends_on"):
        for dep in t.get(key, []):
            if dep not in names:
                host = variables["host"]
                raise ctx.fail(
                    origin(key),
                    f"key '{key}' names '{dep}', which is not a service of host '{host}'",
                    f"add '{dep}' to hosts.{host}.services",
                )
    after = tuple(dict.fromkeys([*t.get("after", []), *t.get("depends_on", [])]))

    port = t.get("port")
    health_checks = tuple(
        Health(
            url=sub("health.url", h["url"]),
            status=h.get("status", 200),
            body=ctx.regex(f"{origin('health.body')}.health", "body", h["body"]) if "body" in h else None,
            headers=dict(h.get("headers", {})),
            header_files={k: sub("health.header_files", v) for k, v in h.get("header_files", {}).items()},
            timeout=float(h.get("timeout", 5.0)),
            name=h.get("name", "health"),
            gate=h.get("gate", True),
        )
        for h in _health_list(t.get("health"))
    )
    health = health_checks[0] if health_checks else None
    r = t.get("ready", {})
    if "health" in r and r["health"] and health is None:
        raise ctx.fail(f"{where}.ready", "key 'health' is true but the service declares no health")
    if r.get("port") and port is None:
        raise ctx.fail(f"{where}.ready", "key 'port' is true but the service declares no port")
    ready = Ready(
        log=ctx.regex(f"{origin('ready.log')}.ready", "log", r["log"]) if "log" in r else None,
        port=r.get("port", port is not None),
        health=r.get("health", health is not None),
        timeout=float(r.get("timeout", defaults.get("ready_timeout", DEFAULT_READY_TIMEOUT))),
    )
    heartbeat = None
    if "heartbeat" in t:
        hb = t["heartbeat"]
        heartbeat = Heartbeat(
            file=sub("heartbeat.file", hb["file"]), max_age=float(hb["max_age"]), field=hb.get("field")
        )
    children = tuple(t.get("children", []))
    restart = Restart(
        policy=t.get("restart", "no"),
        backoff=float(t.get("backoff", 1.0)),
        backoff_max=float(t.get("backoff_max", 300.0)),
        stable_after=float(t.get("stable_after", 60.0)),
        breaker=int(t.get("breaker", 5)),
        min_uptime=float(t.get("min_uptime", 30.0)),
        max_restarts=t.get("max_restarts"),
    )
    return Service(
        name=name,
        cmd=cmd,
        match=match,
        cwd=cwd,
        log=sub("log", t["log"]) if "log" in t else f"{variables['state_dir']}/logs/{name}.log",
        port=port,
        ready=ready,
        health=health,
        health_checks=health_checks,
        env={k: sub(f"env.{k}", v) for k, v in t.get("env", {}).items()},
        env_file=sub("env_file", t["env_file"]) if "env_file" in t else None,
        children=children,
        supervised_by=supervised_by,
        after=after,
        stop_timeout=float(t.get("stop_timeout", defaults.get("stop_timeout", DEFAULT_STOP_TIMEOUT))),
        stop_signal=t.get("stop_signal", "TERM").upper().removeprefix("SIG"),
        heartbeat=heartbeat,
        max_instances=t.get("max_instances"),
        restart=restart,
        checks=_verify_checks(ctx, where, t, supervised_by, health, heartbeat, sub),
        supervisor_log=(f"{variables['state_dir']}/logs/{name}.supervisor.log"
                        if restart.policy != "no" else None),
        match_default=match_default,
        match_overlaps=tuple(t.get("match_overlaps", [])),
        manager=t.get("manager", "tool"),
        unit=t.get("unit"),
        scope=t.get("scope", "system"),
        persist=bool(t.get("persist", False)),
        log_declared="log" in t,
        build=build_steps(ctx, origin("build"), t.get("build", []), name,
                          lambda v: sub("build", v, shell=True)),
    )


BUILD_STEP_KEYS: dict[str, Checker] = {"cmd": _is_str, "timeout": _is_num, "name": _is_str}


def build_steps(ctx: _Ctx, where: str, raw: list[Any], service: str | None,
                sub: Callable[[str], str] = lambda v: v) -> tuple[BuildStep, ...]:
    """`build = ["cmd", { cmd = "...", timeout = 900, name = "deps" }]` -> BuildStep tuple."""
    steps = []
    for i, item in enumerate(raw):
        table = {"cmd": item} if isinstance(item, str) else item
        here = f"{where}.build[{i}]"
        ctx.check_table(here, table, BUILD_STEP_KEYS)
        if not table.get("cmd", "").strip():
            raise ctx.fail(here, "missing or empty key 'cmd'", "give the shell command to run on the host")
        _check_timeouts(ctx, here, table, ("timeout",))
        cmd = sub(table["cmd"])
        label = table.get("name") or (f"{service}: " if service else "") + cmd.split("\n")[0][:60]
        timeout = float(table.get("timeout", DEFAULT_BUILD_TIMEOUT))
        steps.append(BuildStep(name=label, cmd=cmd, timeout=timeout, service=service))
    return tuple(steps)


def _verify_checks(
    ctx: _Ctx,
    where: str,
    t: Mapping[str, Any],
    supervised_by: str | None,
    health: Health | None,
    heartbeat: Heartbeat | None,
    sub: Callable[..., str] | None = None,
) -> tuple[str | Probe, ...]:
    """`checks = [...]`: known names, each backed by what it checks (a supervisor, a health...),
    and tables for checks beyond HTTP ({ cmd = ... }, { file = ... }, { tcp = ... }: ops/probes.py)."""
    from ops import probes

    declared = list(t.get("checks", ()))
    for i, item in enumerate(declared):
        if isinstance(item, dict):
            declared[i] = probes.parse(item, where, ctx.fail, sub or (lambda _k, v, **_kw: v))
    checks = tuple(c for c in declared if isinstance(c, str))
    needs = {
        "restart": (
            supervised_by or (t.get("manager") == "systemd" or t.get("persist")) or None,
            "supervisor (supervised_by, or a supervisor's children = [...], or a systemd unit)",
        ),
        "health": (health, "health check (health = {...})"),
        "heartbeat": (heartbeat, "heartbeat (heartbeat = {...})"),
        "instances": (t.get("max_instances"), "max_instances"),
    }
    for check in checks:
        if check not in VERIFY_CHECKS:
            close = difflib.get_close_matches(check, VERIFY_CHECKS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ctx.fail(
                where,
                f"key 'checks' names unknown check '{check}'{hint}",
                f"known checks: {', '.join(VERIFY_CHECKS)}",
            )
        if check in needs and needs[check][0] is None:
            raise ctx.fail(
                where, f"key 'checks' lists '{check}' but the service declares no {needs[check][1]}"
            )
    if len(set(checks)) != len(checks):
        raise ctx.fail(where, "key 'checks' lists a check twice")
    return tuple(declared)


def _start_order(ctx: _Ctx, where: str, services: Mapping[str, Service]) -> list[str]:
    """Topological order: dependencies first, a supervisor before its children; stable otherwise."""
    deps: dict[str, list[str]] = {name: list(svc.after) for name, svc in services.items()}
    for name, svc in services.items():
        if svc.supervised_by:
            deps[name].append(svc.supervised_by)
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise ctx.fail(
                where,
                f"services depend on each other in a cycle: {cycle}",
                "remove one of the 'after'/'depends_on'/'children' links",
            )
        state[name] = 1
        for dep in deps[name]:
            visit(dep, [*trail, name])
        state[name] = 2
        order.append(name)
        for child in services[name].children:  # children read best right after their supervisor
            visit(child, [*trail, name])

    for name in services:
        visit(name, [])
    return order


