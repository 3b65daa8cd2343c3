"""hosts.toml -> frozen dataclasses, with validation errors that name the file, table and key.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.agent.ownership import default_match, resolve_argv
from ops.errors import InventoryError

DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 300.0
SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")


@dataclass(frozen=True)
class Health:
    url: str
    status: int = 200
    body: str | None = None  # regex the body must match
    headers: Mapping[str, str] = field(default_factory=dict)
    header_files: Mapping[str, str] = field(default_factory=dict)  # header -> file on the host
    timeout: float = 5.0


@dataclass(frozen=True)
class Ready:
    log: str | None = None  # regex matched in log lines written after this start
    port: bool = False  # the port accepts and is held by the service's own processes
    health: bool = False  # the health check passes
    timeout: float = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True)
class Heartbeat:
    file: str
    max_age: float
    field: str | None = None  # JSON field holding a unix timestamp; None: the file's mtime


@dataclass(frozen=True)
class Restart:
    policy: str = "no"  # "no" | "on-failure" | "always"
    backoff: float = 1.0
    backoff_max: float = 300.0
    stable_after: float = 60.0
    breaker: int = 5
    min_uptime: float = 30.0


@dataclass(frozen=True)
class Service:
    name: str
    cmd: str | None
    match: str  # pgrep -f regex that finds this service's processes
    cwd: str
    log: str
    port: int | None = None
    ready: Ready = field(default_factory=Ready)
    health: Health | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    env_file: str | None = None
    children: tuple[str, ...] = ()
    supervised_by: str | None = None
    after: tuple[str, ...] = ()
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    stop_signal: str = "TERM"
    heartbeat: Heartbeat | None = None
    max_instances: int | None = None
    restart: Restart = field(default_factory=Restart)
    checks: tuple[str, ...] = ()  # what `verify.all` runs for it, in order (VERIFY_CHECKS); () = default
    # True when `match` was not given: the agent then uses the command line as the host resolves
    # it (absolute paths), anchored at both ends (ops/agent/ownership.py)
    match_default: bool = False
    match_overlaps: tuple[str, ...] = ()  # services whose command lines `match` may match on purpose

    @property
    def supervised(self) -> bool:
        return self.supervised_by is not None

    def to_agent(self) -> dict[str, Any]:
        """The plain-data spec the on-host agent works from (no secrets: files are read there)."""
        health = None
        if self.health is not None:
            health = {
                "url": self.health.url,
                "status": self.health.status,
                "body": self.health.body,
                "headers": dict(self.health.headers),
                "header_files": dict(self.health.header_files),
                "timeout": self.health.timeout,
            }
        heartbeat = None
        if self.heartbeat is not None:
            heartbeat = {
                "file": self.heartbeat.file,
                "max_age": self.heartbeat.max_age,
                "field": self.heartbeat.field,
            }
        return {
            "name": self.name,
            "cmd": self.cmd,
            "match": self.match,
            "match_default": self.match_default,
            "cwd": self.cwd,
            "log": self.log,
            "port": self.port,
            "ready": {
                "log": self.ready.log,
                "port": self.ready.port,
                "health": self.ready.health,
                "timeout": self.ready.timeout,
            },
            "health": health,
            "env": dict(self.env),
            "env_file": self.env_file,
            "children": list(self.children),
            "supervised_by": self.supervised_by,
            "stop_timeout": self.stop_timeout,
            "stop_signal": self.stop_signal,
            "heartbeat": heartbeat,
            "max_instances": self.max_instances,
            "restart": {
                "policy": self.restart.policy,
                "backoff": self.restart.backoff,
                "backoff_max": self.restart.backoff_max,
                "stable_after": self.restart.stable_after,
                "breaker": self.restart.breaker,
                "min_uptime": self.restart.min_uptime,
            },
        }


@dataclass(frozen=True)
class Host:
    name: str
    ssh: str | None  # an ~/.ssh/config alias or user@host:port; None for the local host
    path: str  # the checkout on the host
    source: str  # "push" | "pull"
    services: tuple[Service, ...]  # resolved for this host, in start order
    state_dir: str
    python: str = "python3"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    branch: str | None = None
    remote: str = "origin"
    min_mem_available_mb: float | None = None  # verify.watch fails below this much MemAvailable

    @property
    def local(self) -> bool:
        return self.ssh is None

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, tuple[str, ...]]
    ssh_config: str | None = None
    known_hosts: str | None = None
    preflight: Preflight = field(default_factory=lambda: Preflight())  # [preflight], parsed below
    persist: float = 0.0  # [ssh] persist: seconds a host's connection and agent are held after a task
    transport: str = "paramiko"  # [ssh] transport: "paramiko" or "openssh" (the system ssh binary)

    def host(self, name: str) -> Host:
        return self.hosts[name]


# --- schema -------------------------------------------------------------------------------------

Checker = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


TYPE_NAMES: dict[Checker, str] = {
    _is_str: "a string",
    _is_int: "an integer",
    _is_num: "a number",
    _is_bool: "true or false",
    _is_str_list: "a list of strings",
    _is_str_map: "a table of strings",
    _is_table: "a table",
}

TOP_KEYS: dict[str, Checker] = {
    "hosts": _is_table,
    "services": _is_table,
    "groups": _is_table,
    "ssh": _is_table,
    "defaults": _is_table,
    "preflight": _is_table,
}
SSH_KEYS: dict[str, Checker] = {"config": _is_str, "known_hosts": _is_str}
SSH_KEYS.update(persist=_is_num, transport=_is_str)  # the warm path (ops/persist.py), issue 18
SSH_TRANSPORTS = ("paramiko", "openssh")
DEFAULT_KEYS: dict[str, Checker] = {
    "ready_timeout": _is_num,
    "stop_timeout": _is_num,
    "connect_timeout": _is_num,
    "command_timeout": _is_num,
    "python": _is_str,
}
HOST_KEYS: dict[str, Checker] = {
    "ssh": _is_str,
    "local": _is_bool,
    "path": _is_str,
    "source": _is_str,
    "services": _is_str_list,
    "state_dir": _is_str,
    "python": _is_str,
    "connect_timeout": _is_num,
    "command_timeout": _is_num,
    "branch": _is_str,
    "remote": _is_str,
    "overrides": _is_table,
    "min_mem_available_mb": _is_num,
}
SERVICE_KEYS: dict[str, Checker] = {
    "cmd": _is_str,
    "match": _is_str,
    "cwd": _is_str,
    "log": _is_str,
    "port": _is_int,
    "ready": _is_table,
    "health": _is_table,
    "env": _is_str_map,
    "env_file": _is_str,
    "children": _is_str_list,
    "supervised_by": _is_str,
    "after": _is_str_list,
    "depends_on": _is_str_list,
    "stop_timeout": _is_num,
    "stop_signal": _is_str,
    "heartbeat": _is_table,
    "max_instances": _is_int,
    "restart": _is_str,
    "backoff": _is_num,
    "backoff_max": _is_num,
    "stable_after": _is_num,
    "breaker": _is_int,
    "min_uptime": _is_num,
    "checks": _is_str_list,
    "match_overlaps": _is_str_list,
}
# `checks` values: the verification steps of ops/verify.py ("restart" kills the child: opt-in only).
VERIFY_CHECKS = ("tree", "restart", "health", "heartbeat", "instances", "orphans")
READY_KEYS: dict[str, Checker] = {
    "log": _is_str,
    "port": _is_bool,
    "health": _is_bool,
    "timeout": _is_num,
}
HEALTH_KEYS: dict[str, Checker] = {
    "url": _is_str,
    "status": _is_int,
    "body": _is_str,
    "headers": _is_str_map,
    "header_files": _is_str_map,
    "timeout": _is_num,
}
HEARTBEAT_KEYS: dict[str, Checker] = {"file": _is_str, "max_age": _is_num, "field": _is_str}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VAR_RE = re.compile(r"\$\{(\w+)(?::([\w.-]+))?\}")


class _Ctx:
    """Carries the file name so every error can name it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str, advice: str = "") -> InventoryError:
        return InventoryError(self.path, where, message, advice)

    def check_table(self, where: str, table: Mapping[str, Any], schema: Mapping[str, Checker]):
        for key, value in table.items():
            if key not in schema:
                close = difflib.get_close_matches(key, list(schema), n=1)
                hint = f"did you mean '{close[0]}'?" if close else ""
                known = ", ".join(sorted(schema))
                raise self.fail(
                    where,
                    f"unknown key '{key}'"
                    + ("" if where else " at the top level")
                    + (f" ({hint})" if hint else ""),
                    f"known keys here are: {known}",
                )
            checker = schema[key]
            if not checker(value):
                raise self.fail(
                    where,
                    f"key '{key}' must be {TYPE_NAMES[checker]}, got {_describe(value)}",
                )

    def regex(self, where: str, key: str, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(
                where,
                f"key '{key}' is not a valid regular expression: {exc} (pattern {pattern!r})",
                "escape special characters such as ( [ + ? with a backslash",
            ) from None
        return pattern


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


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
    _check_timeouts(ctx, "defaults", defaults, tuple(k for k in DEFAULT_KEYS if k.endswith("_timeout")))

    services_raw: dict[str, Any] = dict(data.get("services", {}))
    for name, table in services_raw.items():
        where = f"services.{name}"
        if not _NAME_RE.match(name):
            raise ctx.fail(where, f"'{name}' is not a valid service name", "use letters, digits, _ . -")
        if not isinstance(table, dict):
            raise ctx.fail(where, f"must be a table, got {_describe(table)}")
        _check_service_table(ctx, where, table)
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


# --- [preflight] --------------------------------------------------------------------------------
# The checks `inv preflight` runs before a PR (ops/preflight.py runs them). Validated here like the
# rest of the file: unknown keys rejected, every error names `preflight.KEY`.

PREFLIGHT_RUNNERS = ("pytest", "regex")
DEFAULT_PREFLIGHT_TEST_TIMEOUT = 600.0


@dataclass(frozen=True)
class PreflightTest:
    host: str
    cmd: str  # run by sh on the host, in cwd; a plain command (secrets belong in files on the host)
    cwd: str = "."  # relative to the host's checkout
    name: str | None = None
    runner: str = "pytest"  # "pytest": read its summary line; "regex": exit code + optional regex
    expect_passed: int | None = None
    expect_regex: str | None = None
    timeout: float = DEFAULT_PREFLIGHT_TEST_TIMEOUT


@dataclass(frozen=True)
class Preflight:
    base: str = "origin/main"
    repo: str | None = None  # the local checkout to check (default: the current directory)
    commits: int | None = None  # exact count of commits ahead of base
    expect_commits: tuple[str, ...] = ()  # (short) ids that must all be ahead of base
    only_expected: bool = False  # and no other commits
    clean: bool = True
    max_files: int | None = None
    max_insertions: int | None = None
    max_deletions: int | None = None
    same_head: bool = False  # remote checkouts must be at the local HEAD, with a clean tree
    health: tuple[str, ...] = ()  # host names (or groups) whose services must be healthy
    tests: tuple[PreflightTest, ...] = ()
    fetch: bool = True  # fetch the base's remote before the checks (--no-fetch)
    min_files: int | None = None  # an empty or tiny diff on a branch that should carry work
    min_insertions: int | None = None
    min_deletions: int | None = None
    expect_files: tuple[str, ...] = ()  # globs: the diff touches these paths and only these
    body: str | None = None  # `inv pr`'s body template, relative to the checked repository


PREFLIGHT_KEYS: dict[str, Checker] = {
    "base": _is_str,
    "repo": _is_str,
    "commits": _is_int,
    "expect_commits": _is_str_list,
    "only_expected": _is_bool,
    "clean": _is_bool,
    "max_files": _is_int,
    "max_insertions": _is_int,
    "max_deletions": _is_int,
    "same_head": _is_bool,
    "health": _is_str_list,
    "tests": lambda v: isinstance(v, list),
    "fetch": _is_bool,
    "min_files": _is_int,
    "min_insertions": _is_int,
    "min_deletions": _is_int,
    "expect_files": _is_str_list,
    "body": _is_str,
}
PREFLIGHT_TEST_KEYS: dict[str, Checker] = {
    "host": _is_str,
    "cmd": _is_str,
    "cwd": _is_str,
    "name": _is_str,
    "runner": _is_str,
    "expect_passed": _is_int,
    "expect_regex": _is_str,
    "timeout": _is_num,
}
_COMMIT_ID_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")


def _build_preflight(
    ctx: _Ctx,
    table: Mapping[str, Any],
    hosts: Mapping[str, Host],
    groups: Mapping[str, tuple[str, ...]],
    base: Path,
) -> Preflight:
    def fail(key: str, message: str, advice: str = "") -> InventoryError:
        return ctx.fail(f"preflight.{key}", message, advice)

    for key, value in table.items():
        if key not in PREFLIGHT_KEYS:
            close = difflib.get_close_matches(key, list(PREFLIGHT_KEYS), n=1)
            raise fail(
                key,
                f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                f"known keys here are: {', '.join(sorted(PREFLIGHT_KEYS))}",
            )
        if not PREFLIGHT_KEYS[key](value):
            kind = TYPE_NAMES.get(PREFLIGHT_KEYS[key], "a list of tables ([[preflight.tests]])")
            raise fail(key, f"must be {kind}, got {_describe(value)}")
    if "base" in table and not table["base"].strip():
        raise fail("base", "must not be empty", 'e.g. base = "origin/main"')
    for key in ("commits", "max_files", "max_insertions", "max_deletions", "min_files", "min_insertions",
                "min_deletions"):
        if key in table and table[key] < 0:
            raise fail(key, f"must be 0 or more, got {table[key]}")
    for what in ("files", "insertions", "deletions"):
        lo, hi = table.get(f"min_{what}"), table.get(f"max_{what}")
        if lo is not None and hi is not None and lo > hi:
            raise fail(f"min_{what}", f"is {lo}, more than max_{what} = {hi}: no diff can pass",
                       "lower the minimum or raise the maximum")
    for pattern in table.get("expect_files", []):
        if not pattern.strip() or pattern.startswith("/"):
            raise fail("expect_files", f"{pattern!r} is not a path glob relative to the repository",
                       'e.g. expect_files = ["src/app/**", "tests/test_app.py", "README.md"]')
    if "body" in table and not table["body"].strip():
        raise fail("body", "must not be empty", 'e.g. body = "docs/pr-template.md" (in the repository)')
    ids = list(table.get("expect_commits", []))
    for cid in ids:
        if not _COMMIT_ID_RE.match(cid):
            raise fail("expect_commits", f"{cid!r} is not a commit id", "give hex ids, 4 to 40 digits")
    dupes = sorted({c.lower() for c in ids if [x.lower() for x in ids].count(c.lower()) > 1})
    if dupes:
        raise fail("expect_commits", f"lists {', '.join(dupes)} more than once")
    if "commits" in table and ids and table["commits"] != len(ids) and table.get("only_expected"):
        raise fail(
            "commits",
            f"is {table['commits']} but only_expected allows exactly the {len(ids)} expect_commits",
            "drop one of them",
        )

    known = f"hosts: {', '.join(hosts)}" + (f"; groups: {', '.join(groups)}" if groups else "")
    health: list[str] = []
    for name in table.get("health", []):
        members = list(hosts) if name == "all" else groups.get(name, (name,) if name in hosts else None)
        if members is None:
            raise fail("health", f"names '{name}', which is not a host or group", known)
        for member in members:
            if not hosts[member].services:
                raise fail("health", f"names host '{member}', which runs no services", "remove it")
            if member not in health:
                health.append(member)

    tests: list[PreflightTest] = []
    for i, t in enumerate(table.get("tests", [])):
        key = f"tests[{i}]"
        if not isinstance(t, dict):
            raise fail(key, f"must be a table ([[preflight.tests]]), got {_describe(t)}")
        ctx.check_table(f"preflight.{key}", t, PREFLIGHT_TEST_KEYS)
        for required in ("host", "cmd"):
            if required not in t or not t[required].strip():
                raise fail(key, f"missing key '{required}'", "each test names its host and its command")
        if t["host"] not in hosts:
            raise fail(key, f"key 'host' names '{t['host']}', which is not defined", known)
        runner = t.get("runner", "regex" if "expect_regex" in t else "pytest")
        if runner not in PREFLIGHT_RUNNERS:
            raise fail(key, f"key 'runner' must be \"pytest\" or \"regex\", got {runner!r}")
        pattern = t.get("expect_regex")
        if pattern is not None:
            if runner != "regex":
                raise fail(key, "key 'expect_regex' is for runner = \"regex\"", "pytest is read as is")
            ctx.regex(f"preflight.{key}", "expect_regex", pattern)
            if "expect_passed" in t and re.compile(pattern).groups < 1:
                raise fail(
                    key,
                    "key 'expect_passed' needs a capture group in 'expect_regex' to read the count from",
                    r'e.g. expect_regex = "OK \\((\\d+) tests\\)"',
                )
        elif runner == "regex" and "expect_passed" in t:
            raise fail(key, "key 'expect_passed' with runner = \"regex\" needs 'expect_regex'")
        if t.get("expect_passed", 0) < 0:
            raise fail(key, f"key 'expect_passed' must be 0 or more, got {t['expect_passed']}")
        if "timeout" in t and t["timeout"] <= 0:
            raise fail(key, f"key 'timeout' must be more than 0, got {t['timeout']}")
        tests.append(
            PreflightTest(
                host=t["host"],
                cmd=t["cmd"],
                cwd=t.get("cwd", "."),
                name=t.get("name"),
                runner=runner,
                expect_passed=t.get("expect_passed"),
                expect_regex=pattern,
                timeout=float(t.get("timeout", DEFAULT_PREFLIGHT_TEST_TIMEOUT)),
            )
        )

    return Preflight(
        base=table.get("base", "origin/main").strip(),
        repo=os.path.normpath(_expand_local(table["repo"], base)) if "repo" in table else None,
        commits=table.get("commits"),
        expect_commits=tuple(ids),
        only_expected=table.get("only_expected", False),
        clean=table.get("clean", True),
        max_files=table.get("max_files"),
        max_insertions=table.get("max_insertions"),
        max_deletions=table.get("max_deletions"),
        same_head=table.get("same_head", False),
        health=tuple(health),
        tests=tuple(tests),
        fetch=table.get("fetch", True),
        min_files=table.get("min_files"),
        min_insertions=table.get("min_insertions"),
        min_deletions=table.get("min_deletions"),
        expect_files=tuple(table.get("expect_files", [])),
        body=table["body"].strip() if "body" in table else None,
    )


def _expand_local(value: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def _check_service_table(ctx: _Ctx, where: str, table: Mapping[str, Any], partial: bool = False) -> None:
    """Keys, types and values of a service table. ``partial``: a host's overrides, whose
    sub-tables are merged into the service's, so required keys may come from the service."""
    ctx.check_table(where, table, SERVICE_KEYS)
    for sub, schema in (("ready", READY_KEYS), ("health", HEALTH_KEYS), ("heartbeat", HEARTBEAT_KEYS)):
        if sub in table:
            ctx.check_table(f"{where}.{sub}", table[sub], schema)
    if not partial:
        _check_required(ctx, where, table)
    if "stop_signal" in table and table["stop_signal"].upper().removeprefix("SIG") not in SIGNALS:
        raise ctx.fail(where, f"key 'stop_signal' is not one of {', '.join(SIGNALS)}")
    if "restart" in table and table["restart"] not in ("no", "on-failure", "always"):
        raise ctx.fail(where, 'key \'restart\' must be "no", "on-failure" or "always"')
    _check_timeouts(ctx, where, table, ("stop_timeout",))
    for sub in ("ready", "health"):
        if sub in table:
            _check_timeouts(ctx, f"{where}.{sub}", table[sub], ("timeout",))
    port = table.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ctx.fail(where, f"key 'port' must be between 1 and 65535, got {port}")


def _check_required(ctx: _Ctx, where: str, table: Mapping[str, Any]) -> None:
    if "health" in table and "url" not in table["health"]:
        raise ctx.fail(f"{where}.health", "missing key 'url'", "give the URL to check")
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

    merged = {svc: _merge(services_raw[svc], overrides.get(svc, {})) for svc in names}
    for svc in names:
        if svc in overrides:
            _check_required(ctx, f"{where}.overrides.{svc}", merged[svc])
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
) -> str:
    """Fill in ${...}; in a regex (`match`) the values are escaped, so a path's dots stay dots."""

    def repl(m: re.Match[str]) -> str:
        value = _value(m)
        return re.escape(value) if regex else value

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

    def sub(key: str, value: str, regex: bool = False) -> str:
        return _substitute(ctx, origin(key), key, value, ports, variables, name, regex)

    cmd = sub("cmd", t["cmd"]) if "cmd" in t else None
    if supervised_by is None and cmd is None:
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
    health = None
    if "health" in t:
        h = t["health"]
        health = Health(
            url=sub("health.url", h["url"]),
            status=h.get("status", 200),
            body=ctx.regex(f"{origin('health.body')}.health", "body", h["body"]) if "body" in h else None,
            headers=dict(h.get("headers", {})),
            header_files={k: sub("health.header_files", v) for k, v in h.get("header_files", {}).items()},
            timeout=float(h.get("timeout", 5.0)),
        )
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
        checks=_verify_checks(ctx, where, t, supervised_by, health, heartbeat),
        match_default=match_default,
        match_overlaps=tuple(t.get("match_overlaps", [])),
    )


def _verify_checks(
    ctx: _Ctx,
    where: str,
    t: Mapping[str, Any],
    supervised_by: str | None,
    health: Health | None,
    heartbeat: Heartbeat | None,
) -> tuple[str, ...]:
    """`checks = [...]`: known names, each backed by what it checks (a supervisor, a health...)."""
    checks = tuple(t.get("checks", ()))
    needs = {
        "restart": (supervised_by, "supervisor (supervised_by, or a supervisor's children = [...])"),
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
    return checks


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
