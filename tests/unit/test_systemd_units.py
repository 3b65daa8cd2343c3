"""The pure parts of systemd support (ops/agent/systemd.py), by exact output: unit file
rendering, `systemctl show` parsing, the state mapping, the command lines, the sudo errors; and
the inventory keys manager / unit / scope / persist."""

from __future__ import annotations

import pytest

from ops.agent import systemd as sd
from ops.errors import InventoryError
from ops.inventory import parse

SHOW_RUNNING = """Id=web.service
LoadState=loaded
ActiveState=active
SubState=running
Result=success
MainPID=4242
ExecMainStartTimestampMonotonic=61000000
ExecMainCode=0
ExecMainStatus=0
InvocationID=0c5c4ca538374e9fa322d2ae10f1e7f4
NRestarts=0
ControlGroup=/system.slice/web.service
UnitFileState=enabled
Restart=always
RestartUSec=300ms
InactiveEnterTimestampMonotonic=0
FragmentPath=/etc/systemd/system/web.service
"""


def test_render_unit_exact_with_restart_policy_env_file_and_user() -> None:
    text = sd.render_unit(
        "python3 w.py (ops service w)",
        ["/usr/bin/python3", "w.py", "--name", "a b"],
        "/srv/app",
        "/var/log/w.log",
        env={"B": "x y", "A": "50%"},
        env_file="/srv/app/.env",
        restart={"policy": "on-failure", "backoff": 2, "breaker": 5, "min_uptime": 30},
        user="deploy",
        stop_timeout=10,
        stop_signal="INT",
    )
    assert text == (
        "# Written by ops (inv persist) from the inventory; edits are overwritten.\n"
        "[Unit]\n"
        "Description=python3 w.py (ops service w)\n"
        "StartLimitIntervalSec=160s\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "User=deploy\n"
        "WorkingDirectory=/srv/app\n"
        'Environment="A=50%%"\n'
        'Environment="B=x y"\n'
        "EnvironmentFile=/srv/app/.env\n"
        'ExecStart=/usr/bin/python3 w.py --name "a b"\n'
        "StandardOutput=append:/var/log/w.log\n"
        "StandardError=inherit\n"
        "Restart=on-failure\n"
        "RestartSec=2s\n"
        "KillMode=control-group\n"
        "KillSignal=SIGINT\n"
        "TimeoutStopSec=10s\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def test_render_unit_without_policy_has_no_restart_limits_and_escapes_specifiers() -> None:
    text = sd.render_unit(
        "run 100%", ["/bin/echo", "$HOME", "it's"], "/tmp/a%b", "/tmp/l.log", wanted_by="default.target"
    )
    assert text == (
        "# Written by ops (inv persist) from the inventory; edits are overwritten.\n"
        "[Unit]\n"
        "Description=run 100%%\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "WorkingDirectory=/tmp/a%%b\n"
        'ExecStart=/bin/echo "$$HOME" "it\'s"\n'
        "StandardOutput=append:/tmp/l.log\n"
        "StandardError=inherit\n"
        "Restart=no\n"
        "KillMode=control-group\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=10s\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def test_parse_show_keeps_values_with_equals_signs() -> None:
    props = sd.parse_show(SHOW_RUNNING + "Environment=A=1 B=2\nnoise without equals\n")
    assert props["MainPID"] == "4242"
    assert props["InvocationID"] == "0c5c4ca538374e9fa322d2ae10f1e7f4"
    assert props["Environment"] == "A=1 B=2"
    assert "noise without equals" not in props


def _props(**over: str) -> dict[str, str]:
    props = sd.parse_show(SHOW_RUNNING)
    props.update(over)
    return props


@pytest.mark.parametrize(
    ("over", "stopped", "state", "detail"),
    [
        ({}, False, "running", ""),
        ({"SubState": "exited"}, False, "running", "active (exited)"),
        (
            {
                "ActiveState": "activating",
                "SubState": "auto-restart",
                "NRestarts": "3",
                "Result": "exit-code",
                "ExecMainCode": "1",
                "ExecMainStatus": "2",
                "InactiveEnterTimestampMonotonic": "100000000",
                "RestartUSec": "5000000",
            },
            False,
            "backoff",
            "next try in 2.5s; restarts 3, last: exit-code, exit code 2",
        ),
        (
            {
                "ActiveState": "failed",
                "SubState": "failed",
                "Result": "exit-code",
                "ExecMainCode": "1",
                "ExecMainStatus": "7",
            },
            False,
            "fatal",
            "failed: Result=exit-code, exit code 7",
        ),
        (
            {
                "ActiveState": "failed",
                "SubState": "failed",
                "Result": "signal",
                "ExecMainCode": "2",
                "ExecMainStatus": "9",
            },
            False,
            "fatal",
            "failed: Result=signal, killed by SIGKILL",
        ),
        (
            {"ActiveState": "failed", "Result": "start-limit-hit", "NRestarts": "5"},
            False,
            "fatal",
            "start limit hit after 5 restart(s) (StartLimitBurst); `start` resets it",
        ),
        (
            {"ActiveState": "inactive", "SubState": "dead", "MainPID": "0"},
            True,
            "stopped",
            "stopped by `stop`",
        ),
        (
            {"ActiveState": "inactive", "SubState": "dead", "ExecMainCode": "1", "ExecMainStatus": "0"},
            False,
            "stopped",
            "inactive (exit code 0)",
        ),
        ({"ActiveState": "activating", "SubState": "start"}, False, "starting", "activating (start)"),
        (
            {"ActiveState": "deactivating", "SubState": "stop-sigterm"},
            False,
            "stopping",
            "deactivating (stop-sigterm)",
        ),
        (
            {"LoadState": "not-found", "Id": "nope.service"},
            False,
            "unknown",
            "unit nope.service is not installed on this host",
        ),
        ({"LoadState": "masked"}, False, "unknown", "unit web.service: LoadState=masked"),
    ],
)
def test_state_mapping(over: dict[str, str], stopped: bool, state: str, detail: str) -> None:
    out = sd.state_of(_props(**over), stopped_by_user=stopped, now_mono=102.5)
    assert (out["state"], out["detail"]) == (state, detail)


def test_backoff_reports_restarts_and_last_exit() -> None:
    out = sd.state_of(
        _props(
            ActiveState="activating",
            SubState="auto-restart",
            NRestarts="4",
            ExecMainCode="1",
            ExecMainStatus="3",
        )
    )
    assert out["restarts"] == 4 and out["last_exit"] == 3


def test_command_lines() -> None:
    assert sd.systemctl_argv("system", ["start", "web.service"], sudo=True) == [
        "sudo",
        "-n",
        "systemctl",
        "--no-ask-password",
        "start",
        "web.service",
    ]
    assert sd.systemctl_argv("user", ["show", "web.service"]) == [
        "systemctl",
        "--user",
        "--no-ask-password",
        "show",
        "web.service",
    ]
    assert sd.journalctl_argv("system", "web.service", ["-o", "cat", "--after-cursor", "s=1"]) == [
        "journalctl",
        "--no-pager",
        "-q",
        "-o",
        "cat",
        "--after-cursor",
        "s=1",
        "_SYSTEMD_UNIT=web.service",
    ]
    assert sd.journalctl_argv("user", "web.service", ["-f"], sudo=False) == [
        "journalctl",
        "--user",
        "--no-pager",
        "-q",
        "-f",
        "_SYSTEMD_USER_UNIT=web.service",
    ]
    assert sd.cursor_argv("system", sudo=True) == [
        "sudo",
        "-n",
        "journalctl",
        "--no-pager",
        "-q",
        "-n",
        "0",
        "--show-cursor",
    ]
    assert sd.parse_cursor("-- cursor: s=9d4;i=55;b=fa5\n") == "s=9d4;i=55;b=fa5"
    assert sd.parse_cursor("-- No entries --\n") is None
    assert (
        sd.needs_sudo("system", 1000) and not sd.needs_sudo("system", 0) and not sd.needs_sudo("user", 1000)
    )


def test_sudo_refusals_are_named_and_other_errors_are_not() -> None:
    assert sd.sudo_problem("sudo: a password is required\n") == (
        "sudo needs a password for this user (sudo -n refuses to prompt)"
    )
    assert sd.sudo_problem("Sorry, user bob is not allowed to execute '/usr/bin/systemctl start x' as root")
    assert sd.sudo_problem("bob is not in the sudoers file.  This incident will be reported.")
    assert sd.sudo_problem("Failed to start web.service: Unit web.service not found.") is None


def test_crontab_line_quotes_paths() -> None:
    assert sd.crontab_line("/usr/bin/python3", "/home/a b/agent.pyz", "/s/w.supervise.json") == (
        "@reboot /usr/bin/python3 '/home/a b/agent.pyz' supervise /s/w.supervise.json >/dev/null 2>&1"
    )


def test_cgroup_dir_finds_the_unified_or_hybrid_mount(tmp_path) -> None:  # type: ignore[no-untyped-def]
    unified = tmp_path / "unified"
    (unified / "system.slice" / "web.service" / "sub").mkdir(parents=True)
    (unified / "system.slice" / "web.service" / "cgroup.procs").write_text("10\n11\n")
    (unified / "system.slice" / "web.service" / "sub" / "cgroup.procs").write_text("12\n")
    path = sd.cgroup_dir("/system.slice/web.service", roots=(str(tmp_path / "none"), str(unified)))
    assert path == str(unified / "system.slice" / "web.service")
    assert sd.cgroup_pids(path) == {10, 11, 12}
    assert sd.cgroup_dir("", roots=(str(unified),)) is None


def _inv(service: dict, **host: object):  # type: ignore[no-untyped-def]
    return parse(
        {"hosts": {"h": {"ssh": "h", "path": "/srv", "services": ["w"], **host}}, "services": {"w": service}},
        "hosts.toml",
    )


def test_inventory_unit_keys_and_defaults() -> None:
    svc = _inv({"manager": "systemd"}).host("h").service("w")
    assert (svc.manager, svc.unit_name, svc.scope, svc.persist, svc.cmd) == (
        "systemd",
        "w.service",
        "system",
        False,
        None,
    )
    spec = svc.to_agent()
    assert (spec["manager"], spec["unit"], spec["scope"], spec["journal"]) == (
        "systemd",
        "w.service",
        "system",
        True,
    )
    assert spec["match"] == "(?!)"  # no cmd, no match: only the cgroup says what is its
    logged = _inv({"manager": "systemd", "unit": "x@1.service", "scope": "user", "log": "/l"}).host("h")
    assert logged.service("w").to_agent()["journal"] is False
    persisted = _inv({"cmd": "python3 w.py", "persist": True, "restart": "always"}).host("h").service("w")
    assert persisted.is_unit and persisted.to_agent()["persist"] is True


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"manager": "docker", "cmd": "x"}, "key 'manager' must be \"tool\" or \"systemd\", got 'docker'"),
        ({"manager": "systemd", "scope": "session"}, 'key \'scope\' must be "system" or "user"'),
        ({"manager": "systemd", "unit": "web"}, "key 'unit' must name a service unit"),
        ({"cmd": "x", "unit": "w.service"}, "key 'unit' applies to systemd units only"),
        (
            {"manager": "systemd", "persist": True, "cmd": "x"},
            'has both manager = "systemd" and persist = true',
        ),
        (
            {"manager": "systemd", "restart": "always"},
            "key 'restart' does not apply to manager = \"systemd\"",
        ),
        ({"persist": True, "manager": "tool"}, "key 'persist' is true but there is no 'cmd'"),
    ],
)
def test_inventory_rejects_bad_unit_keys_naming_the_table(service: dict, message: str) -> None:
    with pytest.raises(InventoryError) as err:
        _inv(service)
    assert "services.w" in str(err.value) and message in str(err.value), str(err.value)


def _host_with_units():  # type: ignore[no-untyped-def]
    return parse(
        {
            "hosts": {"h": {"ssh": "h", "path": "/srv", "services": ["web", "side", "tool"]}},
            "services": {
                "web": {"cmd": "python3 web.py", "persist": True, "restart": "always"},
                "side": {"manager": "systemd", "scope": "user", "after": ["web"]},
                "tool": {"cmd": "python3 tool.py"},
            },
        },
        "hosts.toml",
    ).host("h")


def test_deploy_plan_names_the_systemctl_actions() -> None:
    from ops.deploy import build_plan

    probe = {"checkout": {"path": "/srv", "head": "a" * 40, "dirty": []}, "record": {}, "lock": None}
    status = [{"name": "web", "state": "running", "pid": 42}, {"name": "tool", "state": "running", "pid": 43}]
    plan = build_plan(_host_with_units(), None, "b" * 40, probe, status)
    assert plan["systemctl"] == {
        "stop": ["systemctl --user stop side.service", "systemctl stop web.service"],
        "start": [
            "write web.service from the inventory, daemon-reload, enable",
            "systemctl start web.service",
            "systemctl --user start side.service",
        ],
    }
    assert [(s["service"], s["signal"]) for s in plan["would_signal"]] == [
        ("tool", "TERM"),
        ("web", "systemctl stop web.service"),
    ]


def test_enable_and_persist_pick_their_services_or_name_the_wrong_one() -> None:
    from ops.control import unit_services
    from ops.errors import UsageError

    host = _host_with_units()
    assert [s.name for s in unit_services(host, None, "enable")] == ["web", "side"]
    assert [s.name for s in unit_services(host, None, "persist", persist=True)] == ["web", "tool"]
    # named, a tool-run service goes to the host, which knows whether `inv persist` made it a unit
    assert [s.name for s in unit_services(host, ["tool"], "enable")] == ["tool"]
    with pytest.raises(UsageError) as err:
        unit_services(host, ["side"], "persist", persist=True)
    assert "service 'side' is already a systemd unit" in str(err.value)
