"""Issue 12 in the inventory and in `inv status`'s exit code: several named health checks with an
explicit `gate`, `max_restarts`, the supervisor's own log path; the exit code per finding."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ops import control, inventory
from ops.errors import InventoryError

BASE = """\
[hosts.h]
local = true
path = "/srv/app"
state_dir = "/var/ops"
services = ["a"]

[services.a]
cmd = "sleep 100"
port = 8080
"""


def load(tmp_path: Path, extra: str) -> inventory.Inventory:
    p = tmp_path / "hosts.toml"
    p.write_text(BASE + extra)
    return inventory.load(p)


def refused(tmp_path: Path, extra: str, *fragments: str) -> None:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, extra)
    for f in fragments:
        assert f in info.value.message, info.value.message


def test_several_health_checks_each_named_with_its_gate(tmp_path: Path) -> None:
    inv = load(tmp_path, """
[[services.a.health]]
name = "lookup"
url = "http://127.0.0.1:${port}/lookup"
header_files = { X-Token = "~/.token" }

[[services.a.health]]
name = "wrong-token"
url = "http://127.0.0.1:${port}/lookup"
status = 401
headers = { X-Token = "nope" }
gate = false
""")
    svc = inv.host("h").service("a")
    assert [(h.name, h.status, h.gate) for h in svc.health_checks] == [
        ("lookup", 200, True), ("wrong-token", 401, False)]
    assert svc.health is svc.health_checks[0] and svc.ready.health
    agent = svc.to_agent()
    assert [h["name"] for h in agent["health_checks"]] == ["lookup", "wrong-token"]
    assert agent["health_checks"][0]["url"] == "http://127.0.0.1:8080/lookup"


def test_one_health_table_is_still_one_check_named_health(tmp_path: Path) -> None:
    svc = load(tmp_path, 'health = { url = "http://127.0.0.1:${port}/health" }\n').host("h").service("a")
    assert [(h.name, h.gate) for h in svc.health_checks] == [("health", True)]


def test_several_health_checks_must_each_have_a_name(tmp_path: Path) -> None:
    refused(tmp_path, 'health = [{ url = "http://x/1" }, { url = "http://x/2" }]\n',
            "[services.a.health[0]]", "missing key 'name'")


def test_two_health_checks_with_one_name_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, 'health = [{ name = "x", url = "http://x/1" }, { name = "x", url = "http://x/2" }]\n',
            "two health checks have the same name")


def test_a_bad_key_in_the_second_health_check_is_named(tmp_path: Path) -> None:
    refused(tmp_path, 'health = [{ name = "x", url = "http://x/1" }, { name = "y", url = "http://x/2", '
                      'gate = "no" }]\n', "[services.a.health[1]]", "key 'gate' must be true or false")


def test_max_restarts_and_the_supervisors_log(tmp_path: Path) -> None:
    svc = load(tmp_path, 'restart = "always"\nmax_restarts = 3\n').host("h").service("a")
    assert svc.restart.max_restarts == 3
    assert svc.supervisor_log == "/var/ops/logs/a.supervisor.log"
    assert svc.to_agent()["restart"]["max_restarts"] == 3
    plain = load(tmp_path, "").host("h").service("a")
    assert plain.restart.max_restarts is None and plain.supervisor_log is None


def test_a_negative_max_restarts_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, 'restart = "always"\nmax_restarts = -1\n', "key 'max_restarts' must be 0 or more")


# --- inv status exit code -----------------------------------------------------------------------


def row(state: str, health: bool | None = None, port_ok: bool | None = None) -> dict[str, Any]:
    return {"state": state, "health": None if health is None else {"ok": health}, "port_ok": port_ok}


def outcome(*rows: dict[str, Any], ok: bool = True) -> Any:
    return SimpleNamespace(ok=ok, value=list(rows) if ok else None)


@pytest.mark.parametrize(("rows", "code"), [
    ([row("running", True, True), row("running")], 0),
    ([row("running", False, True)], 1),
    ([row("running", None, False)], 1),
    ([row("running"), row("stopped")], 6),
    ([row("stopped"), row("dead")], 7),
    ([row("backoff")], 7),
    ([row("fatal"), row("unknown")], 7),
    ([row("unknown"), row("running", False)], 8),
    ([row("running", False), row("stopped")], 1),
])
def test_status_code_is_the_worst_finding(rows: list[dict[str, Any]], code: int) -> None:
    assert control.status_code([outcome(*rows)]) == code


def test_status_code_of_an_unreachable_host_wins(tmp_path: Path) -> None:
    assert control.status_code([outcome(row("dead")), outcome(ok=False)]) == 3
    assert control.status_code([outcome(row("running"))]) == 0
