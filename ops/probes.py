"""Checks beyond HTTP, declared in a service's ``checks`` list (hosts.toml) next to the built-in
names, and run by ``verify.all`` (so by every deploy's verify step) on the host
(``ops/agent/probes.py``)::

    checks = [
      "tree",
      { cmd = "python3 -m py_compile scripts/supervisor.py" },           # exit 0 expected
      { cmd = "python3 worker.py --self-test", exit = 0, output = "self-test ok", timeout = 20 },
      { file = "logs/api/api-calls-*.jsonl", max_age = 300 },           # a match younger than 5 min
      { file = "logs/heartbeat.json", since_start = true },              # written since the start
      { tcp = "${port}" },                                               # the port answers
      { tcp = "127.0.0.1:6379", name = "redis" },
    ]

- ``cmd``: a command run on the host (a string through ``sh``, or an argv list) in ``cwd``
  (relative to the checkout; default the checkout), bounded by ``timeout`` (default 30 s; its
  process group is killed after it). Passes when its exit code is ``exit`` (default 0) and, if
  ``output`` is given, that regex is found in its output (stdout then stderr). The output shown
  is its redacted tail.
- ``file``: a path or glob (relative to the checkout). Passes when something matches and the
  newest match is at most ``max_age`` seconds old and, with ``since_start``, was modified after
  the service's recorded start (so a file left over by a previous run does not count).
- ``tcp``: ``PORT`` or ``HOST:PORT`` (default host 127.0.0.1). Passes when a TCP connection is
  accepted within ``timeout`` (default 2 s). For a port on this host of a service the tool runs,
  the listener must also be held by the service's own process tree (the holder is named
  otherwise), as for the port gate.

Every probe may have a ``name`` (shown instead of its kind). This module parses and validates the
tables (pure; errors name the file, the table and the key) and turns them into the agent's steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("cmd", "file", "tcp")
DEFAULT_CMD_TIMEOUT = 30.0
DEFAULT_TCP_TIMEOUT = 2.0

KEYS: dict[str, tuple[str, ...]] = {
    "cmd": ("cmd", "exit", "output", "timeout", "cwd", "name"),
    "file": ("file", "max_age", "since_start", "name"),
    "tcp": ("tcp", "timeout", "name"),
}

Fail = Callable[[str, str, str], Exception]  # (where, message, advice) -> the error to raise
Sub = Callable[..., str]  # (key, value, shell=False) -> value with ${...} filled in (quoted for sh)


@dataclass(frozen=True)
class Probe:
    """One declared check beyond HTTP (see the module's docstring)."""

    kind: str  # "cmd" | "file" | "tcp"
    target: str | tuple[str, ...]  # the command (string or argv), the path/glob, or "host:port"
    name: str = ""
    exit: int = 0
    output: str | None = None  # regex searched in the command's output
    timeout: float = DEFAULT_CMD_TIMEOUT
    cwd: str | None = None
    max_age: float | None = None
    since_start: bool = False

    @property
    def label(self) -> str:
        """The check's name in reports: its ``name``, else its kind."""
        return self.name or self.kind

    def to_step(self, service: str) -> dict[str, Any]:
        """The agent's verify step for this probe on ``service``."""
        target = list(self.target) if isinstance(self.target, tuple) else self.target
        step: dict[str, Any] = {"check": self.kind, "service": service, "label": self.label, "target": target}
        if self.kind == "cmd":
            step.update(exit=self.exit, output=self.output, timeout=self.timeout, cwd=self.cwd)
        elif self.kind == "file":
            step.update(max_age=self.max_age, since_start=self.since_start)
        else:
            step.update(timeout=self.timeout)
        return step

    def cost(self) -> float:
        """An upper bound of the seconds it may take on the host."""
        return self.timeout if self.kind in ("cmd", "tcp") else 1.0


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse(table: Mapping[str, Any], where: str, fail: Fail, sub: Sub) -> Probe:
    """A ``checks`` table -> Probe, or ``fail(...)`` naming the table and the key."""
    kinds = [k for k in KINDS if k in table]
    if len(kinds) != 1:
        what = "several of" if kinds else "none of"
        raise fail(where, f"a table in key 'checks' has {what} 'cmd', 'file', 'tcp'",
                   "each check table is one of { cmd = ... }, { file = ... }, { tcp = ... }")
    kind = kinds[0]
    unknown = [k for k in table if k not in KEYS[kind]]
    if unknown:
        raise fail(where, f"a '{kind}' check in key 'checks' has unknown key '{unknown[0]}'",
                   f"a '{kind}' check takes: {', '.join(KEYS[kind])}")

    def bad(key: str, wanted: str) -> Exception:
        return fail(where, f"a '{kind}' check in key 'checks': '{key}' must be {wanted}, "
                           f"got {table[key]!r}", "see README, Verify: checks beyond HTTP")

    name = table.get("name", "")
    if not isinstance(name, str):
        raise bad("name", "a string")
    timeout_default = DEFAULT_TCP_TIMEOUT if kind == "tcp" else DEFAULT_CMD_TIMEOUT
    timeout = table.get("timeout", timeout_default)
    if "timeout" in table and (not _num(timeout) or timeout <= 0):
        raise bad("timeout", "a number of seconds above 0")
    if kind == "cmd":
        raw = table["cmd"]
        target: str | tuple[str, ...]
        if isinstance(raw, str) and raw.strip():
            target = sub("checks.cmd", raw, shell=True)  # run by sh: values are quoted
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            target = tuple(sub("checks.cmd", x) for x in raw)
        else:
            raise bad("cmd", "a command string or a non-empty list of strings")
        code = table.get("exit", 0)
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
            raise bad("exit", "an exit code from 0 to 255")
        output = table.get("output")
        if output is not None:
            if not isinstance(output, str):
                raise bad("output", "a regex string")
            try:
                re.compile(output)
            except re.error as exc:
                raise fail(where, f"a 'cmd' check in key 'checks': 'output' is not a valid regex: {exc}",
                           "Python regex syntax; escape literal dots and brackets") from None
        cwd = table.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise bad("cwd", "a path string")
        return Probe("cmd", target, name, code, output, float(timeout),
                     sub("checks.cwd", cwd) if cwd else None)
    if kind == "file":
        raw = table["file"]
        if not isinstance(raw, str) or not raw.strip():
            raise bad("file", "a path or glob")
        max_age = table.get("max_age")
        if max_age is not None and (not _num(max_age) or max_age <= 0):
            raise bad("max_age", "a number of seconds above 0")
        since = table.get("since_start", False)
        if not isinstance(since, bool):
            raise bad("since_start", "true or false")
        return Probe("file", sub("checks.file", raw), name, timeout=1.0, since_start=since,
                     max_age=None if max_age is None else float(max_age))
    raw = table["tcp"]
    text = sub("checks.tcp", raw) if isinstance(raw, str) else raw
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise bad("tcp", "a port or 'host:port'")
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad("tcp", "a port (1-65535) or 'host:port'")
    return Probe("tcp", f"{host or '127.0.0.1'}:{int(port)}", name, timeout=float(timeout))
