"""The ownership model's pure parts (ops/agent/ownership.py) and the inventory's pattern rules,
by exact output, against literal process tables (no processes are touched)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from ops import inventory
from ops.agent import ownership
from ops.agent.procs import Proc
from ops.errors import InventoryError

BASE = 4_200_000  # synthetic pids, far above any real one


def proc(pid: int, ppid: int, *argv: str, pgid: int | None = None, uid: int = 0, start: str = "100") -> Proc:
    return Proc(pid, ppid, pgid or pid, pgid or pid, uid, "S", start, 1000.0, tuple(argv))


class FakeProbe(ownership.Probe):
    """cwd and markers from literal maps; uid 0 is "this user"."""

    def __init__(self, cwds: dict[int, str] | None = None, markers: dict[int, str] | None = None) -> None:
        super().__init__(uid=0)
        self.cwds = cwds or {}
        self.markers = markers or {}

    def marker(self, p: Proc):
        return ownership.parse_marker(self.markers.get(p.pid))

    def cwd(self, p: Proc):
        return self.cwds.get(p.pid)


def domain(
    table: dict[int, Proc], probe: FakeProbe, state: dict | None = None, **kw: Any
) -> ownership.Domain:
    return ownership.Domain(table, "/st", "/srv/staging", "phone", state=state, probe=probe, **kw)


# --- markers and patterns ------------------------------------------------------------------------


def test_a_marker_names_the_state_directory_the_service_and_the_start() -> None:
    value = ownership.marker_value("/home/u/.ops#x", "phone", "1a.2b")
    assert value == "/home/u/.ops#x#phone#1a.2b"
    assert ownership.parse_marker(value) == ("/home/u/.ops#x", "phone", "1a.2b")
    assert ownership.parse_marker("garbage") is None and ownership.parse_marker(None) is None
    assert ownership.marker_in_environ(b"A=1\0OPS_OWNER=/st#api#7\0B=2") == "/st#api#7"
    assert ownership.marker_in_environ(b"A=1\0B=2\0") is None


def test_relative_paths_in_a_command_are_resolved_under_its_cwd_only_when_they_exist() -> None:
    exists = {"/srv/app/.venv/bin/python", "/srv/app/scripts/phone_call.py"}.__contains__
    argv = [".venv/bin/python", "scripts/phone_call.py", "auto", "--url=a/b", "http://x/y", "-c", "~/f/g"]
    assert ownership.resolve_argv(argv, "/srv/app", exists=exists) == [
        "/srv/app/.venv/bin/python",
        "/srv/app/scripts/phone_call.py",
        "auto",
        "--url=a/b",
        "http://x/y",
        "-c",
        "~/f/g",
    ]
    assert ownership.resolve_argv(["python3", "missing/x.py"], "/srv/app", exists=exists) == [
        "python3",
        "missing/x.py",
    ]


def test_the_default_pattern_is_the_command_line_anchored_at_both_ends() -> None:
    pattern = ownership.default_match(["python3", "/p/svc.py", "--tag", "w"])
    assert pattern == "^(?:\\S*/)?python3 /p/svc\\.py --tag w$"
    assert re.search(pattern, "python3 /p/svc.py --tag w")
    assert not re.search(pattern, "python3 /p/svc.py --tag w --port 20195")
    assert not re.search(pattern, "python3 /q/p/svc.py --tag w")


def test_a_program_named_without_a_path_may_show_as_a_full_path_and_nothing_else() -> None:
    # a shim (pyenv, asdf) execs the real interpreter by its path: the process shows that path
    pattern = ownership.default_match(["python3", "/p/svc.py"])
    assert re.search(pattern, "/root/.pyenv/versions/3.11.7/bin/python3 /p/svc.py")
    assert not re.search(pattern, "/usr/bin/python3.11 /p/svc.py")
    assert not re.search(pattern, "mypython3 /p/svc.py")
    assert not re.search(pattern, "sudo python3 /p/svc.py")
    exact = ownership.default_match(["/srv/app/.venv/bin/python", "/p/svc.py"])
    assert exact == "^/srv/app/\\.venv/bin/python /p/svc\\.py$"  # a path is taken as written


def test_a_script_shows_its_interpreter_first(tmp_path) -> None:
    env_py = tmp_path / "a.py"
    env_py.write_text("#!/usr/bin/env python3\nprint(1)\n")
    direct = tmp_path / "b.sh"
    direct.write_text("#! /bin/sh -e\necho\n")
    binary = tmp_path / "c"
    binary.write_bytes(b"\x7fELF\x02\x01")
    assert ownership.shown_argv([str(env_py), "--x"]) == ["python3", str(env_py), "--x"]
    assert ownership.shown_argv([str(direct)]) == ["/bin/sh", "-e", str(direct)]
    assert ownership.shown_argv([str(binary), "1"]) == [str(binary), "1"]
    assert ownership.shown_argv([str(tmp_path / "missing")]) == [str(tmp_path / "missing")]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert ownership.shown_argv([str(fifo)]) == [str(fifo)]  # never opened (it would block)
    assert ownership.shown_argv(["python3", str(env_py)]) == ["python3", str(env_py)]  # by PATH: as named
    pattern = ownership.default_match(ownership.shown_argv([str(env_py), "--x"]))
    assert re.search(pattern, f"/usr/bin/python3 {env_py} --x")
    assert not re.search(pattern, f"{env_py} --x")  # never what the process shows


# --- the domain: identity first, then marker, then pattern + user + checkout ------------------------


def test_the_recorded_process_its_tree_and_its_group_are_owned_by_identity() -> None:
    table = {
        BASE: proc(BASE, 1, "sh", "-c", "x"),
        BASE + 1: proc(BASE + 1, BASE, "python3", "child.py", pgid=BASE),
        BASE + 2: proc(BASE + 2, 1, "sleep", "9", pgid=BASE),  # re-parented, still in the group
    }
    d = domain(table, FakeProbe(), {"pid": BASE, "starttime": "100", "pgid": BASE})
    assert d.root == BASE and d.groups == [BASE]
    assert d.members == {BASE: "recorded", BASE + 1: "group", BASE + 2: "group"}


def test_a_group_member_born_before_the_spawn_is_not_owned() -> None:
    table = {BASE + 2: proc(BASE + 2, 1, "sleep", "9", pgid=BASE, start="50")}
    d = domain(table, FakeProbe(), {"pid": BASE, "starttime": "100", "pgid": BASE})
    assert d.members == {}


def test_processes_carrying_its_marker_are_owned_and_another_starts_marker_is_not_for_a_failed_start() -> (
    None
):
    table = {BASE: proc(BASE, 1, "api.py"), BASE + 1: proc(BASE + 1, 1, "api.py")}
    probe = FakeProbe(markers={BASE: "/st#phone#s1", BASE + 1: "/st#phone#s2"})
    assert domain(table, probe).members == {BASE: "marker", BASE + 1: "marker"}
    # a failed start cleans up only what IT spawned
    assert domain(table, probe, start_id="s1").members == {BASE: "marker"}


def test_a_pattern_match_is_owned_only_by_this_user_from_this_checkout_without_a_foreign_marker() -> None:
    table = {
        BASE: proc(BASE, 1, "python3", "scripts/phone_call.py", "auto"),  # from staging: ours
        BASE + 1: proc(BASE + 1, 1, "python3", "scripts/phone_call.py", "auto"),  # from prod
        BASE + 2: proc(BASE + 2, 1, "python3", "/srv/staging/scripts/phone_call.py", "auto", uid=1001),
        BASE + 3: proc(BASE + 3, 1, "python3", "scripts/phone_call.py", "auto"),  # prod's marker
        BASE + 4: proc(BASE + 4, 1, "python3", "scripts/phone_call.py", "auto"),  # a sibling's marker
        BASE + 5: proc(BASE + 5, 1, "python3", "/srv/staging/scripts/phone_call.py", "auto"),  # argv path
    }
    probe = FakeProbe(
        cwds={
            BASE: "/srv/staging",
            BASE + 1: "/srv/prod",
            BASE + 3: "/srv/staging",
            BASE + 4: "/srv/staging",
            BASE + 5: "/",
        },
        markers={BASE + 3: "/prod-state#phone#x", BASE + 4: "/st#chatterbox#y"},
    )
    owned, foreign = domain(table, probe).classify("phone_call\\.py auto")
    assert [(p.pid, why) for p, why in owned] == [(BASE, "pattern"), (BASE + 5, "pattern")]
    assert [(p.pid - BASE, why) for p, why in foreign] == [
        (1, "runs from /srv/prod, not from this host's checkout /srv/staging"),
        (2, "runs as uid 1001, not as this user (uid 0)"),
        (3, "carries the marker of another state directory (/prod-state)"),
        (4, "carries the marker of service chatterbox"),
    ]
    note = ownership.foreign_note(table, foreign[:1], "phone")
    assert note == (
        f"matches phone's pattern but is not its own: pid {BASE + 1} (python3 scripts/phone_call.py auto) "
        "runs from /srv/prod, not from this host's checkout /srv/staging: not touched"
    )


def test_a_pre_fork_server_is_one_instance_and_siblings_are_several() -> None:
    table = {
        BASE: proc(BASE, 1, "gunicorn"),
        BASE + 1: proc(BASE + 1, BASE, "gunicorn"),
        BASE + 2: proc(BASE + 2, BASE, "gunicorn"),
        BASE + 3: proc(BASE + 3, 1, "coordinator"),
        BASE + 4: proc(BASE + 4, BASE + 3, "worker"),
        BASE + 5: proc(BASE + 5, BASE + 3, "worker"),
    }
    assert [p.pid for p in ownership.instances(table, [table[BASE + i] for i in range(3)])] == [BASE]
    assert [p.pid for p in ownership.instances(table, [table[BASE + 4], table[BASE + 5]])] == [
        BASE + 4,
        BASE + 5,
    ]


# --- the inventory: anchored defaults, overlaps refused ---------------------------------------------


def inv_data(worker_high: dict[str, Any] | None = None, **worker: Any) -> dict[str, Any]:
    return {
        "hosts": {
            "box": {
                "local": True,
                "path": "/srv/app",
                "state_dir": "/tmp/st",
                "services": ["worker", "worker_high"],
            }
        },
        "services": {
            "worker": {"cmd": "python3 ${path}/svc.py --tag w", **worker},
            "worker_high": worker_high or {"cmd": "python3 ${path}/svc.py --tag w --port 20195"},
        },
    }


def test_the_default_patterns_of_services_sharing_a_prefix_do_not_overlap() -> None:
    host = inventory.parse(inv_data(), "hosts.toml").host("box")
    worker, high = host.service("worker"), host.service("worker_high")
    assert worker.match == "^(?:\\S*/)?python3 /srv/app/svc\\.py --tag w$" and worker.match_default
    assert not re.search(worker.match, inventory.command_line(high) or "")


def test_a_pattern_that_matches_another_services_command_line_is_refused_naming_both() -> None:
    with pytest.raises(InventoryError) as err:
        inventory.parse(inv_data(match="svc\\.py --tag w"), "hosts.toml")
    assert err.value.message == (
        "hosts.toml: [services.worker] its pattern /svc\\.py --tag w/ also matches the command line of "
        "service 'worker_high' (python3 /srv/app/svc.py --tag w --port 20195) on host 'box': stopping one "
        "would sweep the other"
    )
    assert 'match_overlaps = ["worker_high"]' in err.value.advice
    assert err.value.exit_code == 2


def test_an_intended_overlap_is_declared_with_match_overlaps() -> None:
    host = inventory.parse(inv_data(match="svc\\.py --tag w", match_overlaps=["worker_high"]), "hosts.toml")
    assert host.host("box").service("worker").match_overlaps == ("worker_high",)
    with pytest.raises(InventoryError, match="key 'match_overlaps' names 'nope'"):
        inventory.parse(inv_data(match="svc\\.py --tag w", match_overlaps=["nope"]), "hosts.toml")


def test_relative_commands_resolve_under_the_hosts_checkout() -> None:
    data = inv_data(cmd=".venv/bin/python scripts/phone_call.py auto")
    host = inventory.parse(data, "hosts.toml").host("box")
    assert (
        host.service("worker").match == "^/srv/app/\\.venv/bin/python /srv/app/scripts/phone_call\\.py auto$"
    )


def test_a_program_that_path_finds_as_a_script_may_show_its_interpreter_and_full_path(tmp_path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "serve"  # a venv's console script
    tool.write_text("#!/srv/app/.venv/bin/python3\nimport sys\n")
    tool.chmod(0o755)
    plain = bindir / "plain"
    plain.write_bytes(b"\x7fELF")
    plain.chmod(0o755)
    path = f"/nonexistent:{bindir}"
    script = ownership.path_script(["serve", "app:app"], path)
    assert script == ["/srv/app/.venv/bin/python3", str(tool)]
    assert ownership.path_script(["plain"], path) is None  # not a script
    assert ownership.path_script(["missing"], path) is None
    assert ownership.path_script([str(tool)], path) is None  # given by path: shown_argv's case
    pattern = ownership.default_match(["serve", "app:app"], script=script)
    assert re.search(pattern, f"/srv/app/.venv/bin/python3 {tool} app:app")  # run as a script
    assert re.search(pattern, "serve app:app")  # as named (a program that execs itself by name)
    assert not re.search(pattern, f"/srv/app/.venv/bin/python3 {tool} other:app")
    assert not re.search(pattern, "/usr/bin/python3 /elsewhere/serve app:app")
