"""verify.* without SSH or services: the pure parts (plans, judgements, rendering) by exact output,
and the on-host checks against literal process tables (clock and sleep injected)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops import inventory, report, verify
from ops.agent import checks, ownership, procs
from ops.agent.procs import Proc
from ops.errors import InventoryError, OpsError, UsageError
from ops.session import HostOutcome

REPO = Path(__file__).resolve().parents[2]
BASE = 4_000_000  # synthetic pids, far above any real one (never this process or its ancestors)


def proc(pid: int, ppid: int, *argv: str, state: str = "S", start: str = "100") -> Proc:
    return Proc(pid, ppid, pid, pid, 0, state, start, 1000.0, tuple(argv))


# --- the inventory keys: checks, min_mem_available_mb ---------------------------------------------


def inv_data(**extra_api: Any) -> dict[str, Any]:
    return {
        "hosts": {
            "box": {
                "local": True,
                "path": "/srv/app",
                "state_dir": "/tmp/st",
                "services": ["daemon", "worker"],
                "min_mem_available_mb": 512,
            }
        },
        "services": {
            "daemon": {"cmd": "python3 daemon.py", "children": ["api"]},
            "api": {
                "match": "api\\.py --port ${port}",
                "port": 8770,
                "health": {"url": "http://127.0.0.1:${port}/health", "timeout": 2},
                **extra_api,
            },
            "worker": {
                "cmd": "python3 worker.py",
                "heartbeat": {"file": "hb.json", "max_age": 5},
                "max_instances": 1,
            },
        },
    }


def host_of(data: dict[str, Any]) -> inventory.Host:
    return inventory.parse(data, "hosts.toml").host("box")


def test_services_declare_checks_and_hosts_a_memory_floor() -> None:
    host = host_of(inv_data(checks=["tree", "restart", "health"]))
    assert host.service("api").checks == ("tree", "restart", "health")
    assert host.service("worker").checks == ()
    assert host.min_mem_available_mb == 512


@pytest.mark.parametrize(
    "checks_value, message",
    [
        (
            ["tree", "restrat"],
            "[services.api] key 'checks' names unknown check 'restrat' (did you mean 'restart'?)",
        ),
        (
            ["heartbeat"],
            "[services.api] key 'checks' lists 'heartbeat' but the service declares no heartbeat"
            " (heartbeat = {...})",
        ),
        (
            ["instances"],
            "[services.api] key 'checks' lists 'instances' but the service declares no max_instances",
        ),
        (["tree", "tree"], "[services.api] key 'checks' lists a check twice"),
        ("tree", "[services.api] key 'checks' must be a list of strings, got the string 'tree'"),
    ],
)
def test_a_bad_checks_list_is_an_inventory_error_naming_the_service(checks_value: Any, message: str) -> None:
    with pytest.raises(InventoryError) as err:
        host_of(inv_data(checks=checks_value))
    assert err.value.message == "hosts.toml: " + message


def test_restart_is_refused_in_checks_of_a_service_without_supervisor() -> None:
    data = inv_data()
    data["services"]["worker"]["checks"] = ["restart"]
    with pytest.raises(
        InventoryError,
        match=r"\[services.worker\] key 'checks' lists 'restart' but the service declares no supervisor",
    ):
        host_of(data)


def test_a_memory_floor_must_be_positive() -> None:
    data = inv_data()
    data["hosts"]["box"]["min_mem_available_mb"] = 0
    with pytest.raises(InventoryError, match=r"\[hosts.box\] key 'min_mem_available_mb' must be a positive"):
        host_of(data)


# --- the client's plans ---------------------------------------------------------------------------


def test_verify_all_plans_the_non_destructive_default_in_host_order() -> None:
    assert verify.plan_all(host_of(inv_data())) == [
        {"check": "tree", "service": "daemon"},
        {"check": "orphans", "service": "daemon"},
        {"check": "tree", "service": "api"},
        {"check": "health", "service": "api"},
        {"check": "orphans", "service": "api"},
        {"check": "tree", "service": "worker"},
        {"check": "heartbeat", "service": "worker"},
        {"check": "instances", "service": "worker"},
        {"check": "orphans", "service": "worker"},
    ]


def test_verify_all_runs_exactly_the_declared_checks_and_restart_only_when_declared() -> None:
    steps = verify.plan_all(host_of(inv_data(checks=["tree", "restart", "health"])))
    assert [s for s in steps if s["service"] == "api"] == [
        {"check": "tree", "service": "api"},
        {"check": "restart", "service": "api", "signal": "KILL", "timeout": 30.0},
        {"check": "health", "service": "api"},
    ]


def test_every_agent_call_is_bounded_by_what_its_checks_may_take() -> None:
    host = host_of(inv_data())
    assert verify.steps_timeout(host, [{"check": "tree", "service": "daemon"}]) == 30 + 5
    assert verify.steps_timeout(host, [{"check": "health", "service": "api"}]) == 30 + 5 + 2
    restart = {"check": "restart", "service": "api", "timeout": 10}
    assert verify.steps_timeout(host, [restart]) == 30 + 5 + 2 + 10 + 2


def test_verify_restart_refuses_a_service_nothing_would_restart() -> None:
    host = host_of(inv_data())
    assert verify.restart_service(host, "api").name == "api"
    with pytest.raises(UsageError) as err:
        verify.restart_service(host, "worker")
    assert err.value.message == (
        "host 'box': service 'worker' has no supervisor (no supervised_by, no restart policy), so nothing "
        "would restart it: verify.restart did not kill it"
    )
    assert err.value.advice == (
        "verify.restart tests a supervised child (api); to restart 'worker' itself use "
        "`inv restart --service worker`"
    )
    with pytest.raises(UsageError, match="host 'box' has no service named 'nope'"):
        verify.restart_service(host, "nope")


def test_health_and_heartbeat_pick_the_services_that_declare_them() -> None:
    host = host_of(inv_data())
    assert [s.name for s in verify.health_services(host, None)] == ["api"]
    assert [s.name for s in verify.heartbeat_services(host, [])] == ["worker"]
    with pytest.raises(UsageError, match="service 'daemon' declares no heartbeat") as err:
        verify.heartbeat_services(host, ["daemon"])
    assert err.value.advice == "add `heartbeat = { ... }` to [services.daemon] in hosts.toml"


def test_the_memory_floor_comes_from_the_flag_else_the_host() -> None:
    host = host_of(inv_data())
    assert verify.min_mem_bytes(host, None) == 512 * 1024 * 1024
    assert verify.min_mem_bytes(host, 1.5) == int(1.5 * 1024 * 1024)
    data = inv_data()
    del data["hosts"]["box"]["min_mem_available_mb"]
    assert verify.min_mem_bytes(host_of(data), None) is None


def test_a_verify_report_is_ok_only_if_every_check_passed() -> None:
    good = {"name": "tree", "service": "api", "ok": True, "detail": "fine", "elapsed": 0.1}
    bad = {"name": "health", "service": "api", "ok": False, "detail": "answered 500", "elapsed": 0.1}
    assert verify.VerifyReport("box", "all", [good]).ok
    r = verify.VerifyReport("box", "all", [good, bad])
    assert not r.ok and r.failed == [bad]
    assert r.summary() == "1 of 2 check(s) failed: api health: answered 500"
    assert verify.VerifyReport("box", "all", [good]).summary() == "1 check(s) passed"
    assert r.to_json() == {"host": "box", "ok": False, "checks": [good, bad]}
    assert verify.VerifyReport("box", "watch", [], [{"t": 0}]).to_json()["samples"] == [{"t": 0}]


# --- judging a watch (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, run",
    [
        ([1, 2, 3], (0, 2)),
        ([1, 2, 2, 3, 4], (2, 4)),
        ([5, 1, 2, 3], (1, 3)),
        ([3, 3, 3], None),
        ([1, 2], None),
    ],
)
def test_a_count_keeps_growing_after_three_strictly_increasing_samples(counts, run) -> None:
    assert checks.growing_run(counts) == run


def samples(counts: list[int], mem: list[int | None] | None = None) -> list[dict]:
    mem = mem or [8 * checks.MB] * len(counts)
    return [
        {"t": float(i), "counts": {"w": c}, "mem_available": m}
        for i, (c, m) in enumerate(zip(counts, mem, strict=True))
    ]


SPEC = {"name": "w", "match": "worker", "max_instances": 2}


def test_watch_fails_a_count_above_max_instances_and_names_when() -> None:
    w, mem = checks.judge_watch(samples([1, 2, 3, 3]), [SPEC])
    assert not w["ok"] and w["counts"] == [1, 2, 3, 3]
    assert w["detail"] == (
        "3 processes match /worker/ at t=2.0s, more than max_instances = 2 (peak 3); "
        "the count keeps growing: 1 -> 2 -> 3 from t=0.0s to t=2.0s"
    )
    assert mem == {
        "name": "memory",
        "service": None,
        "ok": True,
        "detail": "MemAvailable 8..8 MB (no floor set)",
        "min_mem_available": 8 * checks.MB,
        "floor": None,
    }


def test_watch_passes_a_steady_count_within_its_limit() -> None:
    w, _ = checks.judge_watch(samples([2, 2, 1]), [SPEC])
    assert w["ok"] and w["detail"] == "1..2 process(es) in 3 sample(s) (max_instances = 2)"


def test_watch_fails_when_memory_falls_below_the_floor_or_cannot_be_read() -> None:
    _, mem = checks.judge_watch(samples([1, 1], [900 * checks.MB, 300 * checks.MB]), [SPEC], 512 * checks.MB)
    assert not mem["ok"]
    assert mem["detail"] == "MemAvailable fell to 300 MB at t=1.0s, below the floor of 512 MB"
    _, mem = checks.judge_watch(samples([1], [None]), [SPEC], 512 * checks.MB)
    assert not mem["ok"] and "cannot be read" in mem["detail"]
    _, mem = checks.judge_watch(samples([1], [None]), [SPEC])
    assert mem["ok"] and mem["detail"] == "available memory is unknown on this host (no floor set)"


# --- the on-host checks against literal process tables -------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


class CheckoutProbe(ownership.Probe):
    """Evidence for literal processes: each runs from the host's checkout (/srv) as this user,
    except the pids listed in `elsewhere` (cwd -> another checkout)."""

    def __init__(self, elsewhere: dict[int, str] | None = None) -> None:
        super().__init__(uid=0)
        self.elsewhere = elsewhere or {}

    def marker(self, proc: Proc):
        return None

    def cwd(self, proc: Proc) -> str:
        return self.elsewhere.get(proc.pid, "/srv")


class TableChecks(checks.Checks):
    """The real checks, fed literal process tables and a literal owner (no state files)."""

    def __init__(self, tables: list[dict[int, Proc]], owners: dict[str, int | None], specs,
                 elsewhere: dict[int, str] | None = None, **kw) -> None:
        super().__init__(
            {"host": {"name": "box", "path": "/srv", "state_dir": "/nonexistent"}, "services": specs}, **kw
        )
        self.tables = tables
        self.owners = owners
        self.lc.probe_factory = lambda: CheckoutProbe(elsewhere)

    def _snapshot(self):
        return self.tables.pop(0) if len(self.tables) > 1 else self.tables[0]

    def owner(self, spec):
        pid = self.owners.get(spec.get("supervised_by") or spec["name"])
        return (pid, None) if pid else (None, "its supervisor daemon is not running")


SUP = {"name": "daemon", "match": "daemon\\.py", "supervised_by": None}
API = {"name": "api", "match": "api\\.py", "supervised_by": "daemon"}
D, A, B, SH = BASE + 1, BASE + 2, BASE + 3, BASE + 4


def table(*ps: Proc) -> dict[int, Proc]:
    return {p.pid: p for p in ps}


def test_tree_passes_for_the_child_of_its_supervisor_and_shows_the_tree() -> None:
    t = table(proc(D, 1, "python3", "daemon.py"), proc(A, D, "python3", "api.py"))
    c = TableChecks([t], {"daemon": D}, [SUP, API]).tree(API)
    assert c["ok"] and c["detail"] == f"pid {A} is a child of daemon (pid {D})"
    assert c["tree"] == [f"python3({D}) daemon.py", f"  └─ python3({A}) api.py"]
    assert c["expected_parent"] == {"service": "daemon", "pid": D}


def test_tree_accepts_a_descendant_and_names_the_process_between() -> None:
    t = table(proc(D, 1, "daemon.py"), proc(SH, D, "sh", "-c", "run"), proc(A, SH, "api.py"))
    c = TableChecks([t], {"daemon": D}, [SUP, API]).tree(API)
    assert c["ok"] and c["detail"] == f"pid {A} is a descendant of daemon (pid {D}), via pid {SH}"


def test_a_forking_server_is_one_instance_but_two_copies_fail() -> None:
    forked = table(proc(D, 1, "daemon.py"), proc(A, D, "api.py"), proc(B, A, "api.py", "worker"))
    assert [p.pid for p in checks.instances(forked, [forked[A], forked[B]])] == [A]
    assert TableChecks([forked], {"daemon": D}, [SUP, API]).tree(API)["ok"]
    twice = table(proc(D, 1, "daemon.py"), proc(A, D, "api.py"), proc(B, D, "api.py"))
    c = TableChecks([twice], {"daemon": D}, [SUP, API]).tree(API)
    assert (
        not c["ok"]
        and f"it runs 2 times under daemon (pid {D}): pid {A} (api.py), pid {B} (api.py)" in c["detail"]
    )


def test_tree_fails_for_a_child_outside_the_supervisor_and_names_its_actual_parent() -> None:
    t = table(proc(D, 1, "daemon.py"), proc(SH, 1, "bash", "-l"), proc(A, SH, "api.py"))
    c = TableChecks([t], {"daemon": D}, [SUP, API]).tree(API)
    assert not c["ok"]
    assert c["detail"] == (
        f"api: expected under daemon (pid {D}), but no process matching /api\\.py/ runs under daemon "
        f"(pid {D}); pid {A} (api.py) runs elsewhere, not in its tree: its parent is pid {SH} (bash -l)"
    )
    assert c["offenders"] == [
        {
            "pid": A,
            "ppid": SH,
            "cmd": "api.py",
            "parent_cmd": "bash -l",
            "reason": f"outside daemon's tree (pid {D}); its parent is pid {SH} (bash -l)",
        }
    ]


def test_tree_and_orphans_fail_for_a_child_left_behind_by_a_dead_supervisor() -> None:
    t = table(proc(A, 1, "api.py"))
    ch = TableChecks([t], {"daemon": None}, [SUP, API])
    c = ch.tree(API)
    assert not c["ok"] and c["expected_parent"] == {"service": "daemon", "pid": None}
    assert "re-parented to init (ppid 1): an orphan" in c["detail"]
    o = ch.orphans(API)
    assert not o["ok"] and [x["pid"] for x in o["offenders"]] == [A]
    assert o["offenders"][0]["reason"] == (
        "its supervisor daemon is not running; re-parented to init (ppid 1): an orphan"
    )
    sup = ch.orphans(SUP)
    assert {k: v for k, v in sup.items() if k != "elapsed"} == {
        "name": "orphans",
        "service": "daemon",
        "ok": True,
        "detail": "none running",
        "offenders": [],
    }


def test_tree_of_a_top_level_service_fails_when_a_second_copy_runs_elsewhere() -> None:
    t = table(proc(D, 1, "daemon.py"), proc(B, 1, "daemon.py"))
    c = TableChecks([t], {"daemon": D}, [SUP]).tree(SUP)
    assert not c["ok"] and f"daemon runs as pid {D}, but it runs twice: pid {B} (daemon.py)" in c["detail"]
    alone = TableChecks([table(proc(D, 1, "daemon.py"))], {"daemon": D}, [SUP]).tree(SUP)
    assert alone["ok"] and alone["detail"] == f"pid {D} is alive (1 process(es) in its tree)"


def test_restart_kills_nothing_when_it_cannot_tell_which_child_to_kill() -> None:
    twice = table(proc(D, 1, "daemon.py"), proc(A, D, "api.py"), proc(B, D, "api.py"))
    c = TableChecks([twice], {"daemon": D}, [SUP, API]).restart(API)
    assert not c["ok"] and c["old_pid"] is None and c["detail"].endswith("; nothing was killed")
    c = TableChecks([twice], {"daemon": D}, [SUP, API]).restart(SUP)
    assert (
        not c["ok"]
        and c["detail"] == "daemon has no supervisor, so nothing would restart it; it was not killed"
    )
    c = TableChecks([twice], {"daemon": D}, [SUP, API]).restart(API, signame="SIGNOPE")
    assert not c["ok"] and c["detail"] == "unknown signal 'NOPE'"


def test_watch_samples_on_a_fixed_schedule_and_stops_at_the_first_failure(monkeypatch) -> None:
    monkeypatch.setattr(procs, "mem_available_bytes", lambda: 64 * checks.MB)
    spec = {"name": "w", "match": "worker", "max_instances": 2}
    tables = [table(*[proc(BASE + 10 + i, 1, "worker") for i in range(n)]) for n in (1, 2, 3, 3, 3)]
    clock, events = FakeClock(), []
    ch = TableChecks(tables, {}, [spec], emit=events.append, clock=clock, sleep=clock.sleep)
    out = ch.watch([spec], seconds=4, interval=1.0)
    assert [s["counts"]["w"] for s in out["samples"]] == [1, 2, 3]
    assert clock.sleeps == [1.0, 1.0]
    assert [e["sample"]["t"] for e in events] == [0.0, 1.0, 2.0]
    w = out["checks"][0]
    assert not w["ok"] and w["detail"].endswith("(watch stopped early, at t=2.0s of 4s)")


# --- rendering --------------------------------------------------------------------------------------


def render(fmt: str, outcomes) -> str:
    out = io.StringIO()
    report.verify_result(report.Reporter(fmt, out=out), "tree", outcomes)
    return out.getvalue()


TREE_OK = {
    "name": "tree",
    "service": "api",
    "ok": True,
    "detail": "pid 11 is a child of daemon (pid 10)",
    "elapsed": 0.004,
    "tree": ["python3(10) daemon.py", "  └─ python3(11) api.py"],
    "expected_parent": {"service": "daemon", "pid": 10},
    "offenders": [],
}


def test_the_plain_report_is_a_table_then_the_tree_like_pstree() -> None:
    dead = HostOutcome("pi", error=OpsError("pi: connection refused"))
    text = render("plain", [HostOutcome("box", value=verify.VerifyReport("box", "tree", [TREE_OK])), dead])
    assert text == (
        "verify.tree\n"
        "host  service  check  result       time   detail\n"
        "box   api      tree   ok           0.00s  pid 11 is a child of daemon (pid 10)\n"
        "pi    -        tree   unreachable  -      pi: connection refused\n"
        "box: api tree - expected parent: daemon (pid 10):\n"
        "  python3(10) daemon.py\n"
        "    └─ python3(11) api.py\n"
        "verify.tree: 1 passed, 0 failed, 1 host(s) unreachable\n"
    )


def test_the_json_report_has_every_check_with_its_evidence() -> None:
    dead = HostOutcome("pi", error=OpsError("pi: connection refused"))
    data = json.loads(
        render("json", [HostOutcome("box", value=verify.VerifyReport("box", "tree", [TREE_OK])), dead])
    )
    assert data == {
        "verify": "tree",
        "ok": False,
        "hosts": [
            {"host": "box", "ok": True, "error": None, "checks": [TREE_OK]},
            {"host": "pi", "ok": False, "error": "pi: connection refused", "checks": []},
        ],
    }


def test_a_rich_report_does_not_read_regexes_as_markup() -> None:
    bad = dict(TREE_OK, ok=False, detail="no process matching /[p]hone_api/ under daemon")
    text = render("rich", [HostOutcome("box", value=verify.VerifyReport("box", "tree", [bad]))])
    assert "[p]hone_api" in text


def test_progress_prints_samples_as_they_come_and_checks_only_when_asked() -> None:
    out = io.StringIO()
    rep = report.Reporter("plain", out=out)
    sample = {"t": 1.0, "counts": {"w": 3}, "mem_available": 2048 * 1024 * 1024}
    report.VerifyProgress(rep).event("box", {"event": "sample", "sample": sample})
    report.VerifyProgress(rep).event("box", {"event": "check", "check": TREE_OK})
    report.VerifyProgress(rep, checks=True).event("box", {"event": "check", "check": TREE_OK})
    report.VerifyProgress(rep).event(
        "box", {"event": "progress", "service": "api", "message": "sent SIGKILL"}
    )
    assert out.getvalue() == (
        "box  1.0s  2048 MB  w=3\n"
        "box: api tree: ok (0.00s) - pid 11 is a child of daemon (pid 10)\n"
        "box: api: sent SIGKILL\n"
    )


# --- the tasks: bad arguments fail before touching a host --------------------------------------------


def test_inv_verify_with_an_unknown_service_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(
        '[hosts.box]\nssh = "opsdead-nowhere"\npath = "/srv"\nservices = ["w"]\n'
        '[services.w]\ncmd = "python3 w.py"\n'
    )
    env = {"PATH": "/usr/bin:/bin", "OPS_INVENTORY": str(path), "HOME": str(tmp_path)}
    for args in (["verify.tree", "nope"], ["verify.heartbeat", "w"], ["verify.restart", "w"]):
        r = subprocess.run(
            [sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: host 'box'") and "Traceback" not in r.stderr


def test_heartbeat_judges_the_json_field_or_the_mtime_relative_to_the_checkout(tmp_path: Path) -> None:
    import os
    import time

    ch = checks.Checks({"host": {"name": "box", "path": str(tmp_path), "state_dir": str(tmp_path / "st")}})
    (tmp_path / "hb.json").write_text(json.dumps({"unix_ts": time.time() - 0.5}))
    fresh = ch.heartbeat({"name": "w", "heartbeat": {"file": "hb.json", "field": "unix_ts", "max_age": 5}})
    assert fresh["ok"] and fresh["path"] == str(tmp_path / "hb.json") and 0.4 < fresh["age"] < 5
    (tmp_path / "beat").write_text("")
    os.utime(tmp_path / "beat", (time.time() - 60, time.time() - 60))
    stale = ch.heartbeat({"name": "w", "heartbeat": {"file": "beat", "field": None, "max_age": 30}})
    assert not stale["ok"] and stale["detail"].startswith(f"heartbeat {tmp_path}/beat (mtime) is 60")
    assert stale["detail"].endswith("s old, max_age 30s: STALE")
    (tmp_path / "dir.json").mkdir()
    bad = ch.heartbeat({"name": "w", "heartbeat": {"file": "dir.json", "field": "unix_ts", "max_age": 5}})
    assert not bad["ok"] and bad["detail"] == f"heartbeat {tmp_path}/dir.json cannot be read: Is a directory"
    gone = ch.heartbeat({"name": "w", "heartbeat": {"file": "nope.json", "field": "unix_ts", "max_age": 5}})
    assert not gone["ok"] and gone["detail"] == f"heartbeat {tmp_path}/nope.json does not exist"
