"""hosts.toml validation: one test per malformed case (the message names the file, the table and
the key), a few of them through the real `inv hosts` (exit 2, no traceback), and the positive
rules: start order, overrides, --host resolution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops import inventory
from ops.errors import InventoryError, UsageError

REPO = Path(__file__).resolve().parents[2]

# A valid inventory; cases append to it or replace one line of it.
BASE = """\
[hosts.h]
local = true
path = "/srv/app"
services = ["a"]

[services.a]
cmd = "sleep 100"
"""


def write(tmp_path: Path, text: str, name: str = "hosts.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def fails(tmp_path: Path, text: str, where: str, *fragments: str) -> InventoryError:
    """Load ``text``; it must fail in table ``where`` with every fragment in the message."""
    p = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        inventory.load(p)
    err = info.value
    prefix = f"{p}: [{where}] " if where else f"{p}: "
    assert err.message.startswith(prefix), err.message
    assert err.where == where
    for fragment in fragments:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"
    assert err.exit_code == 2
    assert err.advice
    return err


def with_b(extra_a: str = "", b: str = 'cmd = "sleep 200"\n', services: str = '["a", "b"]') -> str:
    """BASE with a second service b on the host."""
    return BASE.replace('services = ["a"]', f"services = {services}") + extra_a + "\n[services.b]\n" + b


def inv_hosts(path: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `inv hosts` (python -m invoke is the same program as the `inv` script)."""
    env = {**os.environ, "OPS_INVENTORY": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "hosts", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- syntax and file --------------------------------------------------------------------------


def test_bad_toml_names_the_file_and_the_line(tmp_path):
    fails(tmp_path, "[hosts.h]\nlocal = true\npath = \n", "", "is not valid TOML", "line 3")


def test_missing_file_names_it_and_says_how_to_point_elsewhere(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(InventoryError) as info:
        inventory.load(p)
    assert info.value.message == f"{p}: no such inventory file"
    assert "--inventory" in info.value.advice and "OPS_INVENTORY" in info.value.advice


def test_not_utf8_is_reported_as_bad_toml(tmp_path):
    p = tmp_path / "hosts.toml"
    p.write_bytes(b'[hosts.h]\npath = "\xff"\n')
    with pytest.raises(InventoryError, match="is not valid TOML"):
        inventory.load(p)


def test_no_hosts(tmp_path):
    fails(tmp_path, '[services.a]\ncmd = "x"\n', "hosts", "no hosts are declared")


# --- unknown keys (with did-you-mean) -----------------------------------------------------------


def test_unknown_key_at_top_level(tmp_path):
    err = fails(
        tmp_path, BASE + "\n[hots]\n", "", "unknown key 'hots' at the top level", "did you mean 'hosts'"
    )
    assert "known keys here are" in err.advice


def test_unknown_key_in_a_host(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", "local = true\nservces = []"),
        "hosts.h",
        "unknown key 'servces'",
        "did you mean 'services'",
    )


def test_unknown_key_in_a_service(tmp_path):
    fails(tmp_path, BASE + "prot = 80\n", "services.a", "unknown key 'prot'", "did you mean 'port'")


def test_unknown_key_in_ready(tmp_path):
    fails(tmp_path, BASE + "ready.timout = 5\n", "services.a.ready", "unknown key 'timout'", "'timeout'")


def test_unknown_key_in_health(tmp_path):
    fails(
        tmp_path,
        BASE + 'health = { url = "http://127.0.0.1:1/", stauts = 200 }\n',
        "services.a.health",
        "unknown key 'stauts'",
        "did you mean 'status'",
    )


def test_unknown_key_in_a_host_override(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", "local = true\noverrides.a.ready.lgo = 'x'"),
        "hosts.h.overrides.a.ready",
        "unknown key 'lgo'",
        "did you mean 'log'",
    )


# --- wrong types --------------------------------------------------------------------------------


def test_port_as_a_string(tmp_path):
    fails(tmp_path, BASE + 'port = "8080"\n', "services.a", "key 'port' must be an integer", "'8080'")


def test_services_not_a_list(tmp_path):
    fails(
        tmp_path,
        BASE.replace('services = ["a"]', 'services = "a"'),
        "hosts.h",
        "key 'services' must be a list of strings",
        "the string 'a'",
    )


def test_ready_timeout_a_string(tmp_path):
    fails(tmp_path, BASE + 'ready.timeout = "5"\n', "services.a.ready", "key 'timeout' must be a number")


def test_stop_signal_a_number(tmp_path):
    fails(tmp_path, BASE + "stop_signal = 9\n", "services.a", "key 'stop_signal' must be a string")


def test_zero_timeout_is_refused_not_silently_defaulted(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", "local = true\nconnect_timeout = 0"),
        "hosts.h",
        "key 'connect_timeout' must be a positive number of seconds",
    )


# --- references between services ---------------------------------------------------------------


def test_service_listed_by_a_host_but_not_defined(tmp_path):
    err = fails(
        tmp_path, BASE.replace('["a"]', '["a", "b"]'), "hosts.h", "key 'services' names 'b'", "not defined"
    )
    assert "[services.b]" in err.advice


def test_child_not_defined(tmp_path):
    fails(tmp_path, BASE + 'children = ["c"]\n', "services.a", "key 'children' names 'c'", "not defined")


def test_child_not_defined_in_a_service_no_host_runs_yet(tmp_path):
    text = BASE + '\n[services.z]\ncmd = "x"\nchildren = ["api"]\n'
    fails(tmp_path, text, "services.z", "key 'children' names 'api'", "not defined")


def test_after_names_a_service_not_on_the_host(tmp_path):
    err = fails(
        tmp_path,
        with_b('after = ["b"]\n', services='["a"]'),
        "services.a",
        "key 'after' names 'b'",
        "not a service of host 'h'",
    )
    assert err.advice == "add 'b' to hosts.h.services"


def test_after_names_an_undefined_service_with_did_you_mean(tmp_path):
    fails(tmp_path, with_b('after = ["bb"]\n'), "services.a", "key 'after' names 'bb'", "did you mean 'b'")


def test_dependency_cycle_via_after(tmp_path):
    fails(
        tmp_path,
        with_b('after = ["b"]\n', b='cmd = "y"\nafter = ["a"]\n'),
        "hosts.h",
        "cycle: a -> b -> a",
    )


def test_dependency_cycle_via_children(tmp_path):
    # b is a's child (so it starts after a), and a waits for b: impossible.
    fails(
        tmp_path,
        with_b('after = ["b"]\nchildren = ["b"]\n', b='match = "y"\n', services='["a"]'),
        "hosts.h",
        "cycle: a -> b -> a",
    )


def test_duplicate_port_on_a_host(tmp_path):
    err = fails(
        tmp_path, with_b("port = 8080\n", b='cmd = "y"\nport = 8080\n'), "hosts.h", "both use port 8080"
    )
    assert "overrides" in err.advice


def test_duplicate_port_via_overrides(tmp_path):
    text = with_b("port = 8080\n", b='cmd = "y"\nport = 8081\n').replace(
        "local = true", "local = true\noverrides.b.port = 8080"
    )
    fails(tmp_path, text, "hosts.h", "services 'a' and 'b' both use port 8080")


# --- commands and patterns ----------------------------------------------------------------------


def test_missing_cmd(tmp_path):
    err = fails(
        tmp_path, BASE.replace('cmd = "sleep 100"', 'log = "x.log"'), "services.a", "missing key 'cmd'"
    )
    assert "supervised_by" in err.advice


def test_supervised_service_with_a_cmd(tmp_path):
    fails(
        tmp_path,
        with_b('children = ["b"]\n', b='cmd = "y"\nmatch = "y"\n', services='["a"]'),
        "services.b",
        "has a 'cmd' but is started by its supervisor 'a'",
    )


def test_child_without_match(tmp_path):
    err = fails(
        tmp_path,
        with_b('children = ["b"]\n', b="port = 9000\n", services='["a"]'),
        "services.b",
        "missing key 'match'",
    )
    assert "pgrep" in err.advice


def test_bad_regex_in_match(tmp_path):
    err = fails(
        tmp_path, BASE + 'match = "api.py (--port"\n', "services.a", "key 'match'", "regular expression"
    )
    assert "backslash" in err.advice


def test_bad_regex_in_ready_log(tmp_path):
    fails(tmp_path, BASE + 'ready.log = "ready ["\n', "services.a.ready", "key 'log'", "regular expression")


def test_bad_regex_in_health_body(tmp_path):
    fails(
        tmp_path,
        BASE + 'health = { url = "http://127.0.0.1:1/", body = "ok)" }\n',
        "services.a.health",
        "key 'body'",
        "regular expression",
    )


def test_bad_regex_in_an_override_names_the_override(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", 'local = true\noverrides.a.match = "x("'),
        "hosts.h.overrides.a",
        "key 'match'",
        "regular expression",
    )


def test_bad_stop_signal(tmp_path):
    fails(
        tmp_path, BASE + 'stop_signal = "SIGBOOM"\n', "services.a", "key 'stop_signal' is not one of", "TERM"
    )


def test_port_out_of_range(tmp_path):
    fails(tmp_path, BASE + "port = 70000\n", "services.a", "key 'port' must be between 1 and 65535", "70000")


# --- hosts ------------------------------------------------------------------------------------


def test_host_with_neither_ssh_nor_local(tmp_path):
    err = fails(tmp_path, BASE.replace("local = true\n", ""), "hosts.h", "missing key 'ssh'")
    assert "local = true" in err.advice


def test_host_with_both_ssh_and_local(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", 'local = true\nssh = "box"'),
        "hosts.h",
        "both 'local = true' and 'ssh'",
    )


def test_bad_source_value(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", 'local = true\nsource = "git"'),
        "hosts.h",
        'key \'source\' must be "push" or "pull"',
        "'git'",
    )


# --- ${variables} -------------------------------------------------------------------------------


def test_unknown_variable(tmp_path):
    err = fails(tmp_path, BASE.replace("sleep 100", "sleep ${nope}"), "services.a", "key 'cmd'", "${nope}")
    assert "${port:SERVICE}" in err.advice


def test_port_of_a_service_without_a_port(tmp_path):
    fails(
        tmp_path,
        with_b().replace("sleep 100", "client --to ${port:b}"),
        "services.a",
        "key 'cmd' uses the port of 'b', which declares no port",
    )


def test_port_of_a_service_not_on_the_host(tmp_path):
    fails(
        tmp_path,
        with_b(services='["a"]').replace("sleep 100", "client --to ${port:b}"),
        "services.a",
        "${port:b}",
        "not a service of host 'h'",
    )


def test_unknown_variable_in_an_override_names_the_override(tmp_path):
    fails(
        tmp_path,
        BASE.replace("local = true", 'local = true\noverrides.a.cmd = "run ${paht}"'),
        "hosts.h.overrides.a",
        "key 'cmd' uses unknown variable ${paht}",
    )


# --- groups -------------------------------------------------------------------------------------


def test_group_naming_an_unknown_host(tmp_path):
    err = fails(
        tmp_path, BASE + '\n[groups]\ngpu = ["h", "panda"]\n', "groups", "key 'gpu' names host 'panda'"
    )
    assert "defined hosts: h" in err.advice


def test_group_named_like_a_host(tmp_path):
    fails(tmp_path, BASE + '\n[groups]\nh = ["h"]\n', "groups.h", "group 'h' has the name of a host")


# --- through the real command ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[hosts.h]\npath = \n", "is not valid TOML: Invalid value (at line 2, column 8)"),
        (BASE + "prot = 80\n", "[services.a] unknown key 'prot' (did you mean 'port'?)"),
        (
            with_b('after = ["b"]\n', b='cmd = "y"\nafter = ["a"]\n'),
            "[hosts.h] services depend on each other",
        ),
    ],
    ids=["bad-toml", "unknown-key", "cycle"],
)
def test_inv_hosts_exits_2_with_one_message_and_no_traceback(tmp_path, text, expected):
    p = write(tmp_path, text)
    r = inv_hosts(p)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {p}: ")
    assert expected in r.stderr
    assert "  -> " in r.stderr  # the advice
    assert r.stdout == ""


def test_inv_hosts_on_a_missing_file_exits_2(tmp_path):
    r = inv_hosts(tmp_path / "missing.toml")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "no such inventory file" in r.stderr


def test_inv_hosts_lists_a_valid_inventory(tmp_path):
    r = inv_hosts(write(tmp_path, BASE))
    assert r.returncode == 0, r.stderr
    assert "1 host(s), valid" in r.stdout
    assert "\x1b[" not in r.stdout  # piped: plain text


# --- what a valid inventory means ---------------------------------------------------------------


def test_the_repository_inventory_loads():
    inv = inventory.load(REPO / "hosts.toml")
    local = inv.host("local")
    assert local.local
    assert Path(local.path).is_absolute() and Path(local.path).is_relative_to(REPO)  # relative: to the file
    assert local.service_names == ("demo_daemon", "demo_api", "demo_worker")
    api = local.service("demo_api")
    assert api.supervised_by == "demo_daemon" and api.port == 18770
    assert api.ready.port and api.ready.health
    assert local.service("demo_daemon").children == ("demo_api",)


def test_relative_local_paths_are_taken_from_the_inventory_file(tmp_path):
    text = BASE.replace('path = "/srv/app"', 'path = "."\nstate_dir = "state"')
    (tmp_path / "conf").mkdir()
    host = inventory.load(write(tmp_path / "conf", text)).host("h")
    assert host.path == str(tmp_path / "conf")
    assert host.state_dir == str(tmp_path / "conf" / "state")
    assert host.service("a").log == str(tmp_path / "conf" / "state" / "logs" / "a.log")


def test_start_order_respects_after_and_children(tmp_path):
    text = """\
[hosts.h]
local = true
path = "/srv"
services = ["worker", "web", "db"]

[services.worker]
cmd = "worker"
after = ["web"]

[services.web]
cmd = "web"
children = ["api"]
depends_on = ["db"]

[services.api]
match = "api"

[services.db]
cmd = "db"
"""
    host = inventory.load(write(tmp_path, text)).host("h")
    assert host.service_names == ("db", "web", "api", "worker")
    assert host.service("web").after == ("db",)


OVERRIDES = """\
[hosts.one]
local = true
path = "/srv"
services = ["daemon"]

[hosts.two]
ssh = "box"
path = "~/app"
services = ["daemon"]
overrides.api.port = 19001
overrides.api.ready.timeout = 60

[services.daemon]
cmd = "daemon --api-port ${port:api} --log ${state_dir}/api.log"
children = ["api"]

[services.api]
match = "api\\\\.py --port ${port}"
port = 18770
ready.log = "listening"
health = { url = "http://127.0.0.1:${port}/health", body = "ok" }
"""


def test_overrides_move_a_port_and_substitutions_follow(tmp_path):
    inv = inventory.load(write(tmp_path, OVERRIDES))
    one, two = inv.host("one"), inv.host("two")
    assert one.service("api").port == 18770
    assert one.service("daemon").cmd == "daemon --api-port 18770 --log ~/.local/state/ops/one/api.log"
    api = two.service("api")
    assert api.port == 19001
    assert api.match == r"api\.py --port 19001"
    assert api.health is not None and api.health.url == "http://127.0.0.1:19001/health"
    assert two.service("daemon").cmd == "daemon --api-port 19001 --log ~/.local/state/ops/two/api.log"


def test_an_override_of_one_nested_key_keeps_its_siblings(tmp_path):
    api = inventory.load(write(tmp_path, OVERRIDES)).host("two").service("api")
    assert api.ready.timeout == 60
    assert api.ready.log == "listening"  # not dropped by overriding ready.timeout


# --- --host resolution --------------------------------------------------------------------------

THREE = """\
[groups]
web = ["b", "c"]

[hosts.alpha]
local = true
path = "/srv"

[hosts.b]
ssh = "b"
path = "/srv"

[hosts.c]
ssh = "c"
path = "/srv"
"""


@pytest.fixture
def three(tmp_path):
    return inventory.load(write(tmp_path, THREE))


def names(hosts):
    return [h.name for h in hosts]


def test_resolve_a_host_name(three):
    assert names(inventory.resolve_hosts(three, "b")) == ["b"]


def test_resolve_a_comma_list_keeps_order_and_drops_repeats(three):
    assert names(inventory.resolve_hosts(three, "c, alpha,c")) == ["c", "alpha"]


def test_resolve_a_group(three):
    assert names(inventory.resolve_hosts(three, "web")) == ["b", "c"]


def test_resolve_all(three):
    assert names(inventory.resolve_hosts(three, "all")) == ["alpha", "b", "c"]


def test_resolve_an_unknown_name_suggests_the_closest(three):
    with pytest.raises(UsageError) as info:
        inventory.resolve_hosts(three, "alpah")
    assert "no host or group named 'alpah'" in info.value.message
    assert "did you mean 'alpha'?" in info.value.advice
    assert info.value.exit_code == 2


def test_no_host_given_with_several_hosts_asks_which(three):
    with pytest.raises(UsageError) as info:
        inventory.resolve_hosts(three, None)
    assert "declares 3 hosts; say which with --host" in info.value.message
    assert "groups: web" in info.value.advice


def test_no_host_given_with_one_host_is_that_host(tmp_path):
    inv = inventory.load(write(tmp_path, BASE))
    assert names(inventory.resolve_hosts(inv, None)) == ["h"]


def test_default_match_is_the_command_line_the_process_shows(tmp_path):
    import re

    text = BASE.replace('cmd = "sleep 100"', "cmd = \"sh -c 'sleep 100; echo done'  \"")
    svc = inventory.load(write(tmp_path, text)).hosts["h"].service("a")
    shown = " ".join(["sh", "-c", "sleep 100; echo done"])  # /proc/PID/cmdline joined by spaces
    assert re.search(svc.match, shown)


def test_a_cmd_with_unbalanced_quotes_is_refused(tmp_path):
    fails(tmp_path, BASE.replace('cmd = "sleep 100"', "cmd = \"sh -c 'sleep\""), "services.a",
          "key 'cmd' cannot be parsed")


def test_values_filled_into_a_match_pattern_are_escaped(tmp_path):
    import re

    text = (BASE.replace('path = "/srv/app"', 'path = "/srv/my.app+v2"')
            + 'match = "${path}/bin/run --port ${port}"\nport = 8080\n')
    svc = inventory.load(write(tmp_path, text)).hosts["h"].service("a")
    assert re.search(svc.match, "python3 /srv/my.app+v2/bin/run --port 8080")
    assert not re.search(svc.match, "python3 /srv/myXapp+v2/bin/run --port 8080")
