"""hosts.toml's schema: which keys each table takes and of which type, and the context that turns
a problem into an InventoryError naming the file, the table and the key (with a "did you mean"
for a misspelt key). Values (ranges, forms) are checked in ops/inventory_values.py.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ops.errors import InventoryError

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


def _is_table_or_tables(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))


def _is_check_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str | dict) for x in v)


def _is_build(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str | dict) for x in v)


TYPE_NAMES: dict[Checker, str] = {
    _is_str: "a string",
    _is_int: "an integer",
    _is_num: "a number",
    _is_bool: "true or false",
    _is_str_list: "a list of strings",
    _is_str_map: "a table of strings",
    _is_table: "a table",
    _is_table_or_tables: "a table or a non-empty list of tables",
    _is_build: 'a list of commands (strings, or tables like { cmd = "...", timeout = 600 })',
    _is_check_list: "a list of check names and check tables ({ cmd = ... }, { file = ... }, { tcp = ... })",
}

TOP_KEYS: dict[str, Checker] = {
    "hosts": _is_table,
    "services": _is_table,
    "groups": _is_table,
    "ssh": _is_table,
    "defaults": _is_table,
    "preflight": _is_table,
    "hooks": _is_table,
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
    "build": _is_build,
    "layout": _is_str,
    "shared": _is_str_list,
    "keep": _is_int,
    "hooks": _is_table,
}
SERVICE_KEYS: dict[str, Checker] = {
    "cmd": _is_str,
    "match": _is_str,
    "cwd": _is_str,
    "log": _is_str,
    "port": _is_int,
    "ready": _is_table,
    "health": _is_table_or_tables,
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
    "max_restarts": _is_int,
    "checks": _is_check_list,
    "match_overlaps": _is_str_list,
    "manager": _is_str,
    "unit": _is_str,
    "scope": _is_str,
    "persist": _is_bool,
    "build": _is_build,
}
MANAGERS = ("tool", "systemd")  # who runs a service: the tool itself, or a systemd unit
UNIT_SCOPES = ("system", "user")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.service$")
NEVER_MATCHES = "(?!)"  # the pattern of a unit service that declares neither cmd nor match
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
    "name": _is_str,
    "gate": _is_bool,
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




def _expand_local(value: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)
