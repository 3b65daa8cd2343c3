"""Value rules for hosts.toml: ranges, forms (URLs, ssh targets, names) and ${...} placeholders.

ops/inventory.py checks keys and types; this module checks that each VALUE can work, so that an
inventory that would only fail later, on the host, is refused up front by `inv hosts` and every
task (exit 2, naming the file, the table and the key): a zero `max_age` (the supervisor would kill a
healthy child in a loop), a first `backoff` above `backoff_max`, a health URL without a scheme
(every start would wait out its ready timeout), an unclosed `${port` passed to the program as is.

Pure functions: each takes ``fail(where, message, advice) -> Exception`` and raises what it returns.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

Fail = Callable[..., Exception]

# Keys whose strings are filled in per host (${port}, ${port:NAME}, ${path}, ${host}, ${state_dir}).
# A "${" anywhere else would reach the host literally.
SUBSTITUTED = ("cmd", "match", "cwd", "log", "env_file", "env.*", "health.url", "health.header_files.*",
               "heartbeat.file")
SUBSTITUTED_SHOWN = ", ".join(k.removesuffix(".*") for k in SUBSTITUTED)
_PLACEHOLDER = re.compile(r"\$\{(\w+)(?::([\w.-]+))?\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_SSH_TARGET = re.compile(r"^(?:(?P<user>[^@\s:/]+)@)?"
                         r"(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*)"
                         r"(?::(?P<port>[^:]*))?$")
_GIT_NAME_BAD = re.compile(r"(^[-.]|\.\.|[\s~^:?*\[\\]|@\{|/$|\.lock$|//|^$)")

SSH_FORMS = 'an ~/.ssh/config alias ("panda"), or "user@host", "host:port", "user@host:port"'


def walk(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a table, lists included as their own values."""
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from walk(value, f"{dotted}.")
        else:
            yield dotted, value


def _split(where: str, dotted: str) -> tuple[str, str]:
    """`health.url` under services.api -> ("services.api.health", "url"): the table and the key."""
    table, _, key = dotted.rpartition(".")
    if not where:
        return table, key
    return (f"{where}.{table}" if table else where), key


def finite_numbers(fail: Fail, where: str, table: Mapping[str, Any]) -> None:
    """TOML allows inf and nan; no setting of this tool means anything with them."""
    for dotted, value in walk(table):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                tbl, key = _split(where, dotted)
                raise fail(tbl, f"key '{key}' must be a finite number, got {v}")
            if isinstance(v, dict):
                finite_numbers(fail, f"{where}.{dotted}" if where else dotted, v)


def _positive(fail: Fail, where: str, table: Mapping[str, Any], key: str, what: str = "seconds") -> None:
    if key in table and table[key] <= 0:
        raise fail(where, f"key '{key}' must be a positive number of {what}, got {table[key]}",
                   _advice_for(key))


def _at_least(fail: Fail, where: str, table: Mapping[str, Any], key: str, low: int, advice: str = "") -> None:
    if key in table and table[key] < low:
        raise fail(where, f"key '{key}' must be at least {low}, got {table[key]}", advice)


def _advice_for(key: str) -> str:
    return {
        "max_age": "the heartbeat's writer must refresh it more often than this; e.g. max_age = 30",
        "backoff": "the delay before the first restart, e.g. backoff = 1",
        "stable_after": "seconds of uptime that reset the backoff, e.g. stable_after = 60",
    }.get(key, "")


def _not_blank(fail: Fail, where: str, table: Mapping[str, Any], key: str, advice: str = "") -> None:
    if key in table and isinstance(table[key], str) and not table[key].strip():
        raise fail(where, f"key '{key}' must not be empty", advice)


def _no_control(fail: Fail, where: str, table: Mapping[str, Any], key: str) -> None:
    value = table.get(key)
    if isinstance(value, str) and any(c in value for c in "\0\n\r"):
        raise fail(where, f"key '{key}' contains a newline or NUL character: {value!r}")


def placeholders(fail: Fail, where: str, table: Mapping[str, Any]) -> None:
    """Every `${` opens a well-formed placeholder, and only in keys that are substituted."""
    for dotted, value in walk(table):
        if not isinstance(value, str) or "${" not in value:
            continue
        tbl, key = _split(where, dotted)
        head = dotted.split(".")[0]
        allowed = dotted in SUBSTITUTED or f"{head}.*" in SUBSTITUTED or (
            dotted.count(".") == 2 and f"{dotted.rsplit('.', 1)[0]}.*" in SUBSTITUTED)
        if not allowed:
            raise fail(tbl, f"key '{key}' uses a ${{...}} placeholder, which is not filled in there: "
                       f"{value!r}", f"placeholders work in: {SUBSTITUTED_SHOWN}")
        i = value.find("${")
        while i != -1:
            m = _PLACEHOLDER.match(value, i)
            if m is None:
                close = value.find("}", i)
                shown = value[i:close + 1] if close != -1 else value[i:]
                what = "is not closed" if close == -1 or "${" in value[i + 2:close] else "is malformed"
                raise fail(tbl, f"key '{key}' has a placeholder that {what}: {shown!r} in {value!r}",
                           "write ${port}, ${port:SERVICE}, ${path}, ${host} or ${state_dir}")
            i = value.find("${", m.end())


def _regex_not_empty_match(fail: Fail, where: str, key: str, pattern: str, why: str) -> None:
    filled = _PLACEHOLDER.sub("1", pattern)
    try:
        matches_empty = re.search(filled, "") is not None
    except re.error:
        return  # inventory.py reports the bad pattern itself
    if matches_empty:
        raise fail(where, f"key '{key}' = {pattern!r} matches an empty string, so {why}",
                   "give a pattern that only the intended text matches")


def health_url(fail: Fail, where: str, url: str) -> None:
    """An absolute http(s) URL with a host (placeholders stand for their values)."""
    filled = _PLACEHOLDER.sub("1", url)
    try:
        parts = urlsplit(filled)
        port = parts.port
    except ValueError as exc:
        raise fail(where, f"key 'url' is not a valid URL ({exc}): {url!r}",
                   'e.g. url = "http://127.0.0.1:${port}/health"') from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        missing = "a scheme (http:// or https://)" if parts.scheme not in ("http", "https") else "a host"
        raise fail(where, f"key 'url' must be an http:// or https:// URL with a host; {url!r} has no "
                   f"{missing}",
                   'e.g. url = "http://127.0.0.1:${port}/health"')
    if port is not None and not 1 <= port <= 65535:
        raise fail(where, f"key 'url' has port {port}, outside 1-65535: {url!r}")
    if any(c.isspace() for c in filled):
        raise fail(where, f"key 'url' contains whitespace: {url!r}", "percent-encode it (%20)")


def _health(fail: Fail, where: str, health: Mapping[str, Any]) -> None:
    """One health check's values: timeout, status range, URL form, header names and values."""
    _positive(fail, where, health, "timeout")
    if "status" in health and not 100 <= health["status"] <= 599:
        raise fail(where, f"key 'status' must be an HTTP status (100-599), got {health['status']}")
    if isinstance(health.get("url"), str):
        health_url(fail, where, health["url"])
    for sub in ("headers", "header_files"):
        for name, value in (health.get(sub) or {}).items():
            if not _HEADER_NAME.match(name):
                raise fail(f"{where}.{sub}", f"key '{name}' is not a valid HTTP header name")
            if any(c in value for c in "\0\r\n"):
                raise fail(f"{where}.{sub}", f"key '{name}' contains a newline or NUL character")
            if sub == "header_files" and not value.strip():
                raise fail(f"{where}.{sub}", f"key '{name}' must name a file on the host")


def service(fail: Fail, where: str, table: Mapping[str, Any]) -> None:
    """A service table or a host's override of one (each key on its own)."""
    placeholders(fail, where, table)  # first: a broken ${ would otherwise read as a bad URL or port
    for key in ("stop_timeout", "backoff", "backoff_max", "stable_after"):
        _positive(fail, where, table, key)
    if "min_uptime" in table and table["min_uptime"] < 0:
        raise fail(where, f"key 'min_uptime' must be 0 or more seconds, got {table['min_uptime']}")
    _at_least(fail, where, table, "breaker", 1, "the number of short runs before giving up, e.g. breaker = 5")
    _at_least(fail, where, table, "max_instances", 1, "at least the service itself must be allowed to run")
    for key in ("cmd", "match", "cwd", "log", "env_file"):
        _not_blank(fail, where, table, key)
        _no_control(fail, where, table, key)
    if isinstance(table.get("cmd"), str):
        try:
            shlex.split(table["cmd"])
        except ValueError as exc:
            raise fail(where, f"key 'cmd' cannot be parsed: {exc}", "check its quotes") from None
    if isinstance(table.get("match"), str):
        _regex_not_empty_match(fail, where, "match", table["match"],
                               "it would match every process on the host")
    for name, value in (table.get("env") or {}).items():
        if not _ENV_NAME.match(name):
            raise fail(f"{where}.env", f"key '{name}' is not a valid environment variable name",
                       "use letters, digits and _, not starting with a digit")
        if "\0" in value:
            raise fail(f"{where}.env", f"key '{name}' contains a NUL character")
    ready = table.get("ready") or {}
    _positive(fail, f"{where}.ready", ready, "timeout")
    if isinstance(ready.get("log"), str):
        _regex_not_empty_match(fail, f"{where}.ready", "log", ready["log"],
                               "any line written after the start would pass the gate")
    raw = table.get("health") or {}
    checks = raw if isinstance(raw, list) else [raw]  # one table, or several named ones
    for i, health in enumerate(checks):
        if not isinstance(health, Mapping):
            continue  # the type check names it
        hwhere = f"{where}.health" + (f"[{i}]" if isinstance(raw, list) else "")
        _health(fail, hwhere, health)
    heartbeat = table.get("heartbeat") or {}
    _positive(fail, f"{where}.heartbeat", heartbeat, "max_age")
    for key in ("file", "field"):
        _not_blank(fail, f"{where}.heartbeat", heartbeat, key)
    _no_control(fail, f"{where}.heartbeat", heartbeat, "file")


def service_merged(fail: Fail, where_of: Callable[[str], str], table: Mapping[str, Any]) -> None:
    """Rules between keys, on a service with a host's overrides applied (``where_of(key)`` names
    the table a key came from)."""
    backoff, backoff_max = table.get("backoff", 1.0), table.get("backoff_max", 300.0)
    if backoff > backoff_max:
        key = "backoff" if "backoff" in table else "backoff_max"
        raise fail(where_of(key), f"key '{key}': backoff ({backoff:g}s) is above backoff_max "
                   f"({backoff_max:g}s), so the first restart would wait longer than the cap",
                   "make backoff <= backoff_max")


def ssh_target(fail: Fail, where: str, value: str) -> None:
    """An ssh_config alias, or [user@]host[:port]."""
    m = _SSH_TARGET.match(value)
    if m is None:
        hint = " (the ssh:// URL form is not read here)" if "://" in value else ""
        raise fail(where, f"key 'ssh' = {value!r} is not an ssh target{hint}", f"give {SSH_FORMS}")
    port = m.group("port")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise fail(where, f"key 'ssh' = {value!r} has port {port!r}, not a number in 1-65535",
                   f"give {SSH_FORMS}")


def host(fail: Fail, where: str, table: Mapping[str, Any]) -> None:
    if isinstance(table.get("ssh"), str):
        ssh_target(fail, where, table["ssh"])
    for key in ("path", "state_dir", "python"):
        _not_blank(fail, where, table, key)
        _no_control(fail, where, table, key)
    for key in ("branch", "remote"):
        value = table.get(key)
        if isinstance(value, str) and _GIT_NAME_BAD.search(value):
            raise fail(where, f"key '{key}' = {value!r} is not a valid git {key} name",
                       "no spaces, no leading '-' or '.', no '..', ':', '~', '^', '?', '*', '['")
    for key in ("path", "state_dir", "python", "branch", "remote"):
        value = table.get(key)
        if isinstance(value, str) and "${" in value:
            raise fail(where, f"key '{key}' uses a ${{...}} placeholder, which is not filled in there: "
                       f"{value!r}", "write the value itself")


def self_reference(fail: Fail, where: str, name: str, table: Mapping[str, Any]) -> None:
    """A service cannot be its own child, dependency or supervisor."""
    for key in ("children", "after", "depends_on"):
        if name in (table.get(key) or []):
            raise fail(where, f"key '{key}' names the service itself ('{name}')", "remove it from the list")
    if table.get("supervised_by") == name:
        raise fail(where, f"key 'supervised_by' names the service itself ('{name}')")


def ssh_section(fail: Fail, table: Mapping[str, Any], config_path: str | None) -> None:
    """[ssh] config must name a file that exists, when an SSH host will read it (known_hosts is
    created when missing)."""
    import os

    if config_path is not None and not os.path.isfile(config_path):
        raise fail("ssh", f"key 'config' names {table['config']!r}, which is not a file ({config_path})",
                   "give the path of your ssh_config, or leave it out to use ~/.ssh/config")


def defaults(fail: Fail, table: Mapping[str, Any]) -> None:
    _not_blank(fail, "defaults", table, "python")


def group(fail: Fail, name: str, members: list[str]) -> None:
    if not members:
        raise fail("groups", f"key '{name}' is an empty group", "list its hosts, or remove it")
