"""The [preflight] table of hosts.toml: the checks `inv preflight` runs before a PR (ops/preflight.py
runs them), validated like the rest of the file: unknown keys rejected, every error names
`preflight.KEY`."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.errors import InventoryError
from ops.model import DEFAULT_PREFLIGHT_TEST_TIMEOUT, PREFLIGHT_RUNNERS, Host, Preflight, PreflightTest
from ops.schema import (
    TYPE_NAMES,
    Checker,
    _Ctx,
    _describe,
    _expand_local,
    _is_bool,
    _is_int,
    _is_num,
    _is_str,
    _is_str_list,
)

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


