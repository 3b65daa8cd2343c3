"""The inventory's model: the frozen dataclasses a loaded hosts.toml becomes (Host, Service and
their parts, the [preflight] configuration). This is what user code reads (ops.api returns these);
ops/inventory.py builds them, validating every value; nothing here touches a file or a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ops.hooks import Hook
from ops.probes import Probe

DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 300.0
SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")


@dataclass(frozen=True)
class Health:
    """One HTTP check of a service: the URL, the status and body it must answer, the headers (values
    from files on the host); `gate` says whether it gates the start."""

    url: str
    status: int = 200
    body: str | None = None  # regex the body must match
    headers: Mapping[str, str] = field(default_factory=dict)
    header_files: Mapping[str, str] = field(default_factory=dict)  # header -> file on the host
    timeout: float = 5.0
    name: str = "health"  # several checks: each has its own name
    gate: bool = True  # it gates the start (when ready.health); false: status/verify only

    def to_agent(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "body": self.body,
            "headers": dict(self.headers),
            "header_files": dict(self.header_files),
            "timeout": self.timeout,
            "name": self.name,
            "gate": self.gate,
        }


@dataclass(frozen=True)
class Ready:
    """What a start must see before it counts: a log line written after the start, the port held by
    the service's own processes, the health check."""

    log: str | None = None  # regex matched in log lines written after this start
    port: bool = False  # the port accepts and is held by the service's own processes
    health: bool = False  # the health check passes
    timeout: float = DEFAULT_READY_TIMEOUT


@dataclass(frozen=True)
class Heartbeat:
    """A file the service keeps fresh (its mtime, or a unix timestamp in a JSON field) that must be
    younger than max_age."""

    file: str
    max_age: float
    field: str | None = None  # JSON field holding a unix timestamp; None: the file's mtime


@dataclass(frozen=True)
class Restart:
    """The restart policy of the tool's own supervisor: when to restart, with what backoff, and when
    to give up."""

    policy: str = "no"  # "no" | "on-failure" | "always"
    backoff: float = 1.0
    backoff_max: float = 300.0
    stable_after: float = 60.0
    breaker: int = 5
    min_uptime: float = 30.0
    max_restarts: int | None = None  # restarts in all, whatever their uptime; then fatal


DEFAULT_BUILD_TIMEOUT = 600.0  # s for one build step


@dataclass(frozen=True)
class BuildStep:
    """A command a deploy runs on the host in the new code, before the running services are stopped."""

    """One `build` command, run on the host in the delivered code before the services are stopped."""

    name: str
    cmd: str
    timeout: float = DEFAULT_BUILD_TIMEOUT
    service: str | None = None  # a service's step runs with that service's env and env_file

    def to_agent(self) -> dict[str, Any]:
        return {"name": self.name, "cmd": self.cmd, "timeout": self.timeout, "service": self.service}


@dataclass(frozen=True)
class Service:
    """One service as a host runs it: its command (or its supervisor), how its processes are found,
    its gates, checks and limits."""

    name: str
    cmd: str | None
    match: str  # pgrep -f regex that finds this service's processes
    cwd: str
    log: str
    port: int | None = None
    ready: Ready = field(default_factory=Ready)
    health: Health | None = None  # the first of health_checks
    health_checks: tuple[Health, ...] = ()  # every declared HTTP check (health = [{...}, {...}])
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
    # what `verify.all` runs for it, in order: VERIFY_CHECKS names and probes (ops/probes.py); () = default
    checks: tuple[str | Probe, ...] = ()
    supervisor_log: str | None = None  # the tool's supervisor's own lines (restart policy only)
    # True when `match` was not given: the agent then uses the command line as the host resolves
    # it (absolute paths), anchored at both ends (ops/agent/ownership.py)
    match_default: bool = False
    match_overlaps: tuple[str, ...] = ()  # services whose command lines `match` may match on purpose
    manager: str = "tool"  # "tool" | "systemd" (systemd runs it; `persist` makes the tool write the unit)
    unit: str | None = None  # the systemd unit (default NAME.service) when manager = "systemd" or persist
    scope: str = "system"  # "system" | "user" (systemctl --user)
    persist: bool = False  # the tool writes a unit from this table, enables it and manages it as a unit
    log_declared: bool = True  # False: no `log` key (a unit's lines are then read from its journal)
    build: tuple[BuildStep, ...] = ()  # run at deploy in the new code, before the stop

    @property
    def supervised(self) -> bool:
        return self.supervised_by is not None

    @property
    def is_unit(self) -> bool:
        """systemd runs it (manager = "systemd", or persisted by the tool)."""
        return self.manager == "systemd" or self.persist

    @property
    def unit_name(self) -> str:
        return self.unit or f"{self.name}.service"

    def to_agent(self) -> dict[str, Any]:
        """The plain-data spec the on-host agent works from (no secrets: files are read there)."""
        health = self.health.to_agent() if self.health is not None else None
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
            "health_checks": [h.to_agent() for h in self.health_checks],
            "env": dict(self.env),
            "env_file": self.env_file,
            "children": list(self.children),
            "supervised_by": self.supervised_by,
            "stop_timeout": self.stop_timeout,
            "stop_signal": self.stop_signal,
            "heartbeat": heartbeat,
            "max_instances": self.max_instances,
            "manager": self.manager,
            "unit": self.unit_name,
            "scope": self.scope,
            "persist": self.persist,
            "journal": self.manager == "systemd" and not self.log_declared,
            "restart": {
                "policy": self.restart.policy,
                "backoff": self.restart.backoff,
                "backoff_max": self.restart.backoff_max,
                "stable_after": self.restart.stable_after,
                "breaker": self.restart.breaker,
                "min_uptime": self.restart.min_uptime,
                "max_restarts": self.restart.max_restarts,
            },
            "supervisor_log": self.supervisor_log,
        }


@dataclass(frozen=True)
class Host:
    """One inventory host: how it is reached (local or SSH), its checkout and state directory, the
    services it runs in start order."""

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
    build: tuple[BuildStep, ...] = ()  # the host's own build steps (before its services' ones)
    layout: str = "in-place"  # "in-place": deploy into `path`; "releases": releases/<commit> + current
    root: str = ""  # `path` as written: the checkout (in-place) or the releases root
    shared: tuple[str, ...] = ()  # releases: paths linked from <root>/shared into every release
    keep: int = 5  # releases: how many releases to keep

    @property
    def releases(self) -> bool:
        return self.layout == "releases"

    def build_steps(self) -> tuple[BuildStep, ...]:
        """Every build step of a deploy, in order: the host's, then each service's (start order)."""
        return self.build + tuple(b for s in self.services for b in s.build)
    # deploy hooks per point (after_deliver, before_stop, after_start, after_verify): ops/hooks.py
    hooks: Mapping[str, tuple[Hook, ...]] = field(default_factory=dict)

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
    """A loaded hosts.toml: its hosts and groups, the SSH settings and the [preflight]
    configuration."""

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



# --- [preflight] --------------------------------------------------------------------------------
# The checks `inv preflight` runs before a PR (ops/preflight.py runs them). Validated here like the
# rest of the file: unknown keys rejected, every error names `preflight.KEY`.

PREFLIGHT_RUNNERS = ("pytest", "regex")
DEFAULT_PREFLIGHT_TEST_TIMEOUT = 600.0


@dataclass(frozen=True)
class PreflightTest:
    """A test run `inv preflight` does on a host, with the count of passed tests it expects."""

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
    """The [preflight] table: the base branch and the checks to pass before opening a pull request."""

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


