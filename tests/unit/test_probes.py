"""Checks beyond HTTP in hosts.toml (`checks = [{ cmd = ... }, { file = ... }, { tcp = ... }]`):
parsed by exact value, placed in verify.all's plan in the declared order, and every malformed
table refused naming the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops import inventory, verify
from ops.errors import InventoryError
from ops.probes import Probe

BASE = """\
[hosts.h]
local = true
path = "/srv/app"
state_dir = "/var/ops"
services = ["a"]

[services.a]
cmd = "sleep 100"
port = 8123
"""


def load(tmp_path: Path, checks: str) -> inventory.Inventory:
    p = tmp_path / "hosts.toml"
    p.write_text(BASE + f"checks = {checks}\n")
    return inventory.load(p)


def refused(tmp_path: Path, checks: str, *fragments: str) -> None:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, checks)
    assert info.value.message.startswith(f"{tmp_path / 'hosts.toml'}: [services.a] "), info.value.message
    for f in fragments:
        assert f in info.value.message, info.value.message
    assert info.value.exit_code == 2


def test_probes_are_parsed_with_placeholders_filled_and_defaults(tmp_path: Path) -> None:
    inv = load(tmp_path, '["tree", { cmd = "python3 -m py_compile x.py" }, '
                         '{ cmd = ["./check", "${port}"], exit = 3, output = "ok \\\\d+", timeout = 5, '
                         'cwd = "bin" }, '
                         '{ file = "${state_dir}/out-*.json", max_age = 60, since_start = true, '
                         'name = "out" }, '
                         '{ tcp = "${port}" }, { tcp = "10.0.0.2:6379", timeout = 1 }]')
    checks = inv.host("h").service("a").checks
    assert checks == (
        "tree",
        Probe("cmd", "python3 -m py_compile x.py"),
        Probe("cmd", ("./check", "8123"), exit=3, output="ok \\d+", timeout=5.0, cwd="bin"),
        Probe("file", "/var/ops/out-*.json", "out", timeout=1.0, max_age=60.0, since_start=True),
        Probe("tcp", "127.0.0.1:8123", timeout=2.0),
        Probe("tcp", "10.0.0.2:6379", timeout=1.0),
    )


def test_verify_all_plans_probes_in_the_declared_order(tmp_path: Path) -> None:
    inv = load(tmp_path, '[{ tcp = 8123 }, "orphans", { file = "log.txt" }]')
    assert verify.plan_all(inv.host("h")) == [
        {"check": "tcp", "service": "a", "label": "tcp", "target": "127.0.0.1:8123", "timeout": 2.0},
        {"check": "orphans", "service": "a"},
        {"check": "file", "service": "a", "label": "file", "target": "log.txt", "max_age": None,
         "since_start": False},
    ]
    steps = verify.plan_all(inv.host("h"))
    assert verify.steps_timeout(inv.host("h"), steps) == verify.MARGIN + 3 * verify.SNAPSHOT_COST + 2.0


@pytest.mark.parametrize(("checks", "fragments"), [
    ('[{ exit = 1 }]', ["has none of 'cmd', 'file', 'tcp'"]),
    ('[{ cmd = "x", tcp = 1 }]', ["has several of 'cmd', 'file', 'tcp'"]),
    ('[{ cmd = "x", max_age = 3 }]', ["a 'cmd' check in key 'checks' has unknown key 'max_age'"]),
    ('[{ cmd = "" }]', ["'cmd' must be a command string or a non-empty list of strings"]),
    ('[{ cmd = "x", exit = 300 }]', ["'exit' must be an exit code from 0 to 255, got 300"]),
    ('[{ cmd = "x", output = "(" }]', ["'output' is not a valid regex"]),
    ('[{ cmd = "x", timeout = 0 }]', ["'timeout' must be a number of seconds above 0"]),
    ('[{ file = "x", max_age = -1 }]', ["'max_age' must be a number of seconds above 0"]),
    ('[{ file = "x", since_start = "yes" }]', ["'since_start' must be true or false"]),
    ('[{ tcp = "host:http" }]', ["'tcp' must be a port (1-65535) or 'host:port'"]),
    ('[{ tcp = 70000 }]', ["'tcp' must be a port (1-65535)"]),
    ('[{ tcp = "${port:nope}" }]', ["uses ${port:nope} but 'nope' is not a service"]),
    ('[3]', ["key 'checks' must be a list of check names and check tables"]),
])
def test_a_malformed_probe_names_the_table_and_the_key(tmp_path: Path, checks: str,
                                                      fragments: list[str]) -> None:
    refused(tmp_path, checks, *fragments)
