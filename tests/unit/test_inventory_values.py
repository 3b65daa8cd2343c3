"""Values that cannot work are refused up front (exit 2, naming file, table and key), each next to
its healthy twin that loads: ranges, URL and ssh-target forms, ${...} placeholders, overrides of a
service the host does not run."""

from __future__ import annotations

import pytest

from ops import inventory
from ops.errors import InventoryError
from tests.unit.test_inventory import BASE, inv_hosts, write

# (case id, what to add to BASE's [services.a] (or replace), table named, fragments of the message)
SERVICE_CASES = [
    (
        "zero max_age",
        'heartbeat = { file = "hb", max_age = 0 }',
        "services.a.heartbeat",
        ["'max_age'", "positive"],
    ),
    ("negative max_age", 'heartbeat = { file = "hb", max_age = -5 }', "services.a.heartbeat", ["'max_age'"]),
    (
        "nan max_age",
        'heartbeat = { file = "hb", max_age = nan }',
        "services.a.heartbeat",
        ["'max_age'", "finite"],
    ),
    ("inf ready timeout", "ready = { timeout = inf }", "services.a.ready", ["'timeout'", "finite"]),
    ("zero ready timeout", "ready = { timeout = 0 }", "services.a.ready", ["'timeout'"]),
    ("negative stop_timeout", "stop_timeout = -1", "services.a", ["'stop_timeout'"]),
    (
        "zero health timeout",
        'health = { url = "http://127.0.0.1:80/", timeout = 0 }',
        "services.a.health",
        ["'timeout'"],
    ),
    (
        "backoff above backoff_max",
        'restart = "always"\nbackoff = 600\nbackoff_max = 300',
        "services.a",
        ["'backoff'", "above backoff_max"],
    ),
    ("backoff above the default max", 'restart = "always"\nbackoff = 301', "services.a", ["'backoff'"]),
    ("zero backoff", 'restart = "always"\nbackoff = 0', "services.a", ["'backoff'"]),
    (
        "zero backoff_max",
        'restart = "always"\nbackoff = 0.5\nbackoff_max = 0',
        "services.a",
        ["'backoff_max'"],
    ),
    ("zero stable_after", "stable_after = 0", "services.a", ["'stable_after'"]),
    ("negative min_uptime", "min_uptime = -1", "services.a", ["'min_uptime'"]),
    ("zero breaker", "breaker = 0", "services.a", ["'breaker'"]),
    ("zero max_instances", "max_instances = 0", "services.a", ["'max_instances'"]),
    ("port zero", "port = 0", "services.a", ["'port'"]),
    ("port too big", "port = 70000", "services.a", ["'port'"]),
    (
        "health status",
        'health = { url = "http://127.0.0.1:80/", status = 999 }',
        "services.a.health",
        ["'status'"],
    ),
    (
        "url without scheme",
        'health = { url = "127.0.0.1:8080/health" }',
        "services.a.health",
        ["'url'", "scheme"],
    ),
    ("url with ftp scheme", 'health = { url = "ftp://127.0.0.1/x" }', "services.a.health", ["'url'"]),
    ("url without host", 'health = { url = "http:///health" }', "services.a.health", ["'url'", "host"]),
    ("url bad port", 'health = { url = "http://127.0.0.1:99999/" }', "services.a.health", ["'url'"]),
    ("url with a space", 'health = { url = "http://127.0.0.1/a b" }', "services.a.health", ["'url'"]),
    (
        "unclosed placeholder in cmd",
        'port = 8080\ncmd = "serve --port ${port"',
        "services.a",
        ["'cmd'", "not closed", "${port"],
    ),
    (
        "unclosed placeholder in url",
        'port = 8080\nhealth = { url = "http://127.0.0.1:${port/x" }',
        "services.a.health",
        ["'url'", "not closed"],
    ),
    ("malformed placeholder", 'cmd = "serve ${ port }"', "services.a", ["'cmd'", "malformed"]),
    ("empty placeholder", 'cmd = "serve ${}"', "services.a", ["'cmd'"]),
    ("unknown placeholder", 'cmd = "serve ${home}"', "services.a", ["'cmd'", "unknown variable"]),
    (
        "placeholder where none is filled",
        'port = 8080\nready = { log = "listening on ${port}" }',
        "services.a.ready",
        ["'log'", "not filled in"],
    ),
    (
        "placeholder in a header value",
        'health = { url = "http://x/", headers = { X-A = "${port}" } }',
        "services.a.health.headers",
        ["'X-A'"],
    ),
    ("empty ready.log", 'ready = { log = "" }', "services.a.ready", ["'log'", "empty string"]),
    ("ready.log matching anything", 'ready = { log = ".*" }', "services.a.ready", ["'log'"]),
    ("match matching every process", 'match = ".*"', "services.a", ["'match'", "every process"]),
    ("blank cmd", 'cmd = "  "', "services.a", ["'cmd'", "empty"]),
    ("unbalanced quotes in cmd", 'cmd = "sh -c \'x"', "services.a", ["'cmd'", "No closing quotation"]),
    ("newline in log", 'log = "a\\nb"', "services.a", ["'log'", "newline"]),
    ("bad env name", 'env = { "A-B" = "1" }', "services.a.env", ["'A-B'"]),
    (
        "bad header name",
        'health = { url = "http://x/", headers = { "X A" = "1" } }',
        "services.a.health.headers",
        ["'X A'"],
    ),
    (
        "header value with newline",
        'health = { url = "http://x/", headers = { X-A = "1\\r\\nX-B: 2" } }',
        "services.a.health.headers",
        ["'X-A'"],
    ),
    ("blank heartbeat file", 'heartbeat = { file = "", max_age = 5 }', "services.a.heartbeat", ["'file'"]),
]


def with_service(extra: str) -> str:
    lines = extra.splitlines()
    text = BASE
    if any(line.startswith("cmd =") for line in lines):
        text = text.replace('cmd = "sleep 100"\n', "")
    return text + "\n".join(lines) + "\n"


def refused(tmp_path, text: str, where: str, fragments: list[str]) -> InventoryError:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        inventory.load(path)
    err = info.value
    assert err.where == where, err.message
    assert err.message.startswith(f"{path}: [{where}] "), err.message
    for fragment in fragments:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"
    assert err.exit_code == 2 and err.advice
    return err


@pytest.mark.parametrize(
    ("extra", "where", "fragments"), [c[1:] for c in SERVICE_CASES], ids=[c[0] for c in SERVICE_CASES]
)
def test_a_service_value_that_cannot_work_is_refused(tmp_path, extra, where, fragments):
    refused(tmp_path, with_service(extra), where, fragments)


@pytest.mark.parametrize(
    "extra",
    [
        'heartbeat = { file = "hb", max_age = 0.5 }',
        'restart = "always"\nbackoff = 300\nbackoff_max = 300',
        "min_uptime = 0",
        'port = 8080\ncmd = "serve --port ${port} --dir ${path}/x --state ${state_dir} --name ${host}"',
        'port = 8080\nhealth = { url = "https://127.0.0.1:${port}/v1?name=a%20b", status = 204 }',
        'health = { url = "http://[::1]:8080/" }',
        'ready = { log = "listening" }',
        'match = "sleep 100"',
        'env = { LOG_LEVEL = "${state_dir}/x", A_1 = "$HOME is not a placeholder" }',
        "max_instances = 1",
    ],
    ids=[
        "max_age 0.5",
        "backoff = backoff_max",
        "min_uptime 0",
        "placeholders",
        "url with port",
        "ipv6 url",
        "ready.log",
        "match",
        "env",
        "max_instances 1",
    ],
)
def test_the_healthy_twin_of_each_rule_loads(tmp_path, extra):
    inventory.load(write(tmp_path, with_service(extra)))


def test_a_bad_value_in_a_host_override_names_the_override(tmp_path):
    text = BASE.replace(
        'services = ["a"]', 'services = ["a"]\noverrides.a.heartbeat = { file = "hb", max_age = 0 }'
    )
    refused(tmp_path, text, "hosts.h.overrides.a.heartbeat", ["'max_age'"])


def test_an_override_raising_backoff_above_the_service_max_names_the_override(tmp_path):
    text = (
        BASE.replace('services = ["a"]', 'services = ["a"]\noverrides.a.backoff = 50') + "backoff_max = 10\n"
    )
    refused(tmp_path, text, "hosts.h.overrides.a", ["'backoff'", "above backoff_max"])


def test_an_override_of_a_service_the_host_does_not_run_is_refused(tmp_path):
    text = BASE.replace('services = ["a"]', 'services = ["a"]\noverrides.b.port = 9000')
    text += '\n[services.b]\ncmd = "sleep 200"\n'
    err = refused(tmp_path, text, "hosts.h.overrides.b", ["overrides service 'b'", "does not run"])
    assert "hosts.h.services" in err.advice
    # its twin: the host runs b
    inventory.load(write(tmp_path, text.replace('services = ["a"]', 'services = ["a", "b"]')))


HOST_CASES = [
    ("ssh with a space", 'ssh = "my box"'),
    ("ssh with empty user", 'ssh = "@box"'),
    ("ssh with empty host", 'ssh = "me@"'),
    ("ssh with a bad port", 'ssh = "me@box:ssh"'),
    ("ssh with port 0", 'ssh = "box:0"'),
    ("ssh with port too big", 'ssh = "box:65536"'),
    ("ssh url form", 'ssh = "ssh://me@box:22"'),
    ("ssh empty", 'ssh = ""'),
    ("ssh two colons", 'ssh = "box:22:33"'),
]


@pytest.mark.parametrize("line", [c[1] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES])
def test_an_ssh_target_that_is_no_target_is_refused(tmp_path, line):
    text = BASE.replace("local = true", line)
    refused(tmp_path, text, "hosts.h", ["'ssh'"])


@pytest.mark.parametrize(
    "target",
    ["panda", "me@panda", "panda:2222", "me@10.0.0.5:22", "me@[::1]:22", "box.example.com", "my_box-2"],
)
def test_ssh_targets_of_every_documented_form_load(tmp_path, target):
    inventory.load(write(tmp_path, BASE.replace("local = true", f'ssh = "{target}"')))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('path = ""', "'path'"),
        ('state_dir = " "', "'state_dir'"),
        ('state_dir = "/var/${host}"', "'state_dir'"),
        ('branch = "-f"', "'branch'"),
        ('branch = "a..b"', "'branch'"),
        ('remote = "has space"', "'remote'"),
        ("connect_timeout = 0", "'connect_timeout'"),
        ("command_timeout = nan", "'command_timeout'"),
        ('python = ""', "'python'"),
    ],
)
def test_a_host_value_that_cannot_work_is_refused(tmp_path, line, key):
    key_name = line.split(" =")[0]
    text = BASE.replace('path = "/srv/app"\n', "") if key_name == "path" else BASE
    text = text.replace("local = true", f"local = true\n{line}")
    refused(tmp_path, text, "hosts.h", [key])


def test_an_empty_group_is_refused(tmp_path):
    refused(tmp_path, BASE + "\n[groups]\ngpu = []\n", "groups", ["'gpu'", "empty"])


def test_defaults_must_be_finite_and_positive(tmp_path):
    refused(tmp_path, "[defaults]\nready_timeout = inf\n" + BASE, "defaults", ["'ready_timeout'", "finite"])
    refused(tmp_path, "[defaults]\nstop_timeout = 0\n" + BASE, "defaults", ["'stop_timeout'"])


def test_a_preflight_timeout_of_nan_is_refused(tmp_path):
    text = BASE + '\n[[preflight.tests]]\nhost = "h"\ncmd = "pytest -q"\ntimeout = nan\n'
    refused(tmp_path, text, "preflight.tests", ["'timeout'", "finite"])


@pytest.mark.parametrize(
    ("extra", "where", "key"),
    [
        ('heartbeat = { file = "hb", max_age = 0 }', "services.a.heartbeat", "max_age"),
        ('port = 8080\ncmd = "serve --port ${port"', "services.a", "cmd"),
        ('health = { url = "localhost:8080/health" }', "services.a.health", "url"),
    ],
)
def test_inv_hosts_refuses_it_with_exit_2_naming_file_table_and_key(tmp_path, extra, where, key):
    path = write(tmp_path, with_service(extra))
    r = inv_hosts(path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {path}: [{where}] key '{key}'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("key", ["children", "after", "depends_on"])
def test_a_service_naming_itself_is_refused(tmp_path, key):
    refused(tmp_path, with_service(f'{key} = ["a"]'), "services.a", [f"'{key}'", "the service itself"])


def test_an_ssh_config_that_is_not_a_file_is_refused_when_an_ssh_host_needs_it(tmp_path):
    ssh_host = BASE.replace("local = true", 'ssh = "box"')
    refused(tmp_path, '[ssh]\nconfig = "no-such-ssh-config"\n' + ssh_host, "ssh", ["'config'", "not a file"])
    inventory.load(write(tmp_path, '[ssh]\nconfig = "no-such-ssh-config"\n' + BASE))  # local only: unread
    (tmp_path / "ssh_config").write_text("Host x\n")
    inventory.load(write(tmp_path, '[ssh]\nconfig = "ssh_config"\n' + ssh_host))
