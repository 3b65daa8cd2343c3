"""verify.* end to end: the supervised-API runbook (runbook 1) with real processes, on `local` and
over the real sshd; every check passing on the demo and FAILING on a broken variant.

The demo daemon supervises api.py (auto-restart, token-protected lookup, a log) and the worker
writes a heartbeat; they are started by ops.control.start from a per-test checkout, so the
teardown can kill whatever is left by path. Waits are conditions with timeouts, never sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import time

from ops import control, verify
from tests.harness import pid_alive, process_ids, wait_for_port_closed, wait_for_text, wait_until
from tests.integration.rig import PY, Rig, local_rig_fixture, rig_fixture, ssh_rig_fixture  # noqa: F401


def by_service(report: verify.VerifyReport) -> dict[str, dict]:
    return {c["service"]: c for c in report.checks}


def api_pid(session) -> int:
    """The API's pid as verify.tree sees it (the child of the daemon)."""
    check = by_service(verify.tree(session, ["demo_api"]))["demo_api"]
    assert check["ok"], check
    return check["pid"]


# --- the demo passes every check ----------------------------------------------------------------


def test_the_supervised_demo_passes_tree_restart_health_heartbeat_orphans_and_all(rig: Rig) -> None:
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s)
        daemon = rig.state("demo_daemon")["pid"]

        tree = verify.tree(s, ["demo_daemon"])
        assert tree.ok, tree.summary()
        api = by_service(tree)["demo_api"]
        assert api["detail"] == f"pid {api['pid']} is a child of demo_daemon (pid {daemon})"
        assert api["expected_parent"] == {"service": "demo_daemon", "pid": daemon}
        assert process_ids(api["pid"])["ppid"] == daemon
        assert f"({daemon}) " in api["tree"][0] and str(rig.checkout) in api["tree"][0]
        assert api["tree"][1].startswith("  └─ ") and f"({api['pid']}) " in api["tree"][1]

        events: list[dict] = []
        restart = verify.restart(s, "demo_api", timeout=10, on_event=events.append)
        c = restart.checks[0]
        assert restart.ok, c
        assert c["old_pid"] == api["pid"] and c["new_pid"] not in (None, api["pid"])
        assert not pid_alive(c["old_pid"]) and process_ids(c["new_pid"])["ppid"] == daemon
        assert 0 < c["appeared_after"] <= c["restart_time"] < 10
        assert [g["name"] for g in c["gates"]] == ["port", "health"] and all(g["ok"] for g in c["gates"])
        assert f"demo_daemon brought back pid {c['new_pid']} in {c['restart_time']:.2f}s" in c["detail"]
        assert any("sent SIGKILL" in e.get("message", "") for e in events)

        health = verify.health(s)
        assert health.ok and health.checks[0]["status"] == 200 and health.checks[0]["ms"] > 0
        assert verify.heartbeat(s, ["demo_worker"]).ok
        assert verify.orphans(s).ok
        report = verify.verify_all(s)
        assert report.ok, report.summary()
        assert [(c["service"], c["name"]) for c in report.checks] == [
            ("demo_daemon", "tree"),
            ("demo_daemon", "orphans"),
            ("demo_api", "tree"),
            ("demo_api", "health"),
            ("demo_api", "orphans"),
            ("demo_worker", "tree"),
            ("demo_worker", "heartbeat"),
            ("demo_worker", "instances"),
            ("demo_worker", "orphans"),
        ]

        # Stopping the daemon alone also stops its API, and leaves no orphan.
        new_api = c["new_pid"]
        stopped = control.stop(s, ["demo_daemon"])
        assert stopped.ok, stopped.services
        assert not pid_alive(daemon) and not pid_alive(new_api)
        assert rig.pids_of("api.py") == []
        orphans = verify.orphans(s)
        assert orphans.ok, orphans.summary()
        assert by_service(orphans)["demo_api"]["detail"] == "none running"
        control.stop(s)
    assert rig.running() == {}


def test_inv_verify_commands_exit_0_with_json_and_never_show_the_token(local_rig: Rig) -> None:
    rig = local_rig  # (inv over ssh: see the wrong-parent test)
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s)
    out = rig.inv_json("verify.tree", "demo_api", code=0)
    assert out["verify"] == "tree" and out["ok"] is True
    assert out["hosts"][0]["checks"][0]["expected_parent"]["service"] == "demo_daemon"
    out = rig.inv_json("verify.restart", "demo_api", "--timeout", "10", code=0)
    c = out["hosts"][0]["checks"][0]
    assert c["ok"] and c["restart_time"] < 10 and c["signal"] == "KILL"
    out = rig.inv_json("verify.all", code=0)
    assert len(out["hosts"][0]["checks"]) == 9
    # a terminal-less run prints a plain table with the tree, like pstree -p
    r = rig.inv_cmd("verify.tree", "demo_api")
    assert r.returncode == 0, r.stderr
    assert "expected parent: demo_daemon" in r.stdout and "└─ python3(" in r.stdout
    assert "verify.tree: 1 passed, 0 failed" in r.stdout


# --- health with the right and the wrong token ---------------------------------------------------


def test_verify_health_passes_with_the_token_and_fails_401_with_a_wrong_one(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s)
    out = rig.inv_json("verify.health", code=0)
    good = out["hosts"][0]["checks"][0]
    assert good["ok"] and good["status"] == 200 and good["service"] == "demo_api"

    rig.token_file.write_text("not-the-token\n")
    out = rig.inv_json("verify.health", code=1)
    bad = out["hosts"][0]["checks"][0]
    assert not bad["ok"] and bad["status"] == 401
    assert "answered 401, expected 200" in bad["detail"]
    assert "not-the-token" not in bad["detail"]


# --- broken variants: each check FAILS ----------------------------------------------------------


def test_verify_restart_fails_when_the_daemon_does_not_restart_its_child(rig: Rig) -> None:
    rig.write(rig.verify_demo(daemon_flags="--no-restart"))
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
        old = api_pid(s)
        t = time.monotonic()
        report = verify.restart(s, "demo_api", timeout=1.0)
        took = time.monotonic() - t
        c = report.checks[0]
        assert not report.ok
        assert c["new_pid"] is None and c["old_pid"] == old and not pid_alive(old)
        assert "no new process matching" in c["detail"] and "within 1s after pid" in c["detail"]
        assert took < 5
        # the tree check agrees: the child is missing
        tree = by_service(verify.tree(s, ["demo_api"]))["demo_api"]
        assert not tree["ok"] and "no process matching" in tree["detail"]


def test_inv_verify_restart_exits_1_for_a_child_that_is_not_restarted(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo(daemon_flags="--no-restart"))
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
    out = rig.inv_json("verify.restart", "demo_api", "--timeout", "0.5", "--signal", "TERM", code=1)
    c = out["hosts"][0]["checks"][0]
    assert c["signal"] == "TERM" and c["new_pid"] is None and "within 0.5s" in c["detail"]


def test_verify_restart_fails_when_the_supervisor_dies_with_its_child(local_rig: Rig) -> None:
    """A 'supervisor' that is only a shell waiting for the API: killing the API ends it."""
    rig = local_rig
    port = rig.api_port
    rig.write(
        {
            "shell": {
                "cmd": f"sh -c '{PY} {rig.checkout}/demo/api.py --port {port}; echo api gone'",
                "children": ["shell_api"],
            },
            # anchored: the pattern must not match the `sh -c` line that carries the same words
            "shell_api": {
                "match": f"^{re.escape(PY)} {rig.checkout}/demo/api\\.py --port {port}$",
                "port": port,
            },
        }
    )
    with rig.session() as s:
        rig.start_ok(s)
        sup = rig.state("shell")["pid"]
        c = verify.restart(s, "shell_api", timeout=5).checks[0]
        assert not c["ok"]
        assert c["detail"].startswith(f"the supervisor shell (pid {sup}) died")


def test_verify_restart_refuses_to_kill_a_service_without_supervisor(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
    daemon = rig.state("demo_daemon")["pid"]
    r = rig.inv_cmd("verify.restart", "demo_daemon")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "service 'demo_daemon' has no supervisor" in r.stderr and "did not kill it" in r.stderr
    assert "Traceback" not in r.stderr
    assert pid_alive(daemon)


def test_verify_tree_fails_for_an_api_started_outside_the_daemon_and_names_its_parent(rig: Rig) -> None:
    rig.write(rig.verify_demo(daemon_flags="--no-restart"))
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
        daemon = rig.state("demo_daemon")["pid"]
        old = api_pid(s)
        os.kill(old, signal.SIGKILL)  # the daemon does not restart it ...
        wait_until(lambda: not pid_alive(old), 5)
        wait_for_port_closed(rig.api_port)  # a dying multi-threaded process may still hold it
        # ... so someone starts the API by hand (here: this test process is its parent)
        hand, log = rig.tracker.start(
            [PY, f"{rig.checkout}/demo/api.py", "--port", str(rig.api_port)],
            env=dict(os.environ, DEMO_TOKEN=rig.token),
        )
        # it (not some other process that took the freed port meanwhile) listens
        wait_for_text(log, f"api listening on 127.0.0.1:{rig.api_port} pid {hand.pid}")
        assert rig.pids_of("api.py") == [hand.pid]

        c = by_service(verify.tree(s, ["demo_api"]))["demo_api"]
        assert not c["ok"]
        assert f"expected under demo_daemon (pid {daemon})" in c["detail"]
        assert f"pid {hand.pid}" in c["detail"] and f"its parent is pid {os.getpid()}" in c["detail"]
        assert [o["pid"] for o in c["offenders"]] == [hand.pid]
        assert c["offenders"][0]["ppid"] == os.getpid()
        # an answer from a port held outside the daemon's tree is not the service's health
        health = verify.health(s)
        assert not health.ok and f"is held by pid {hand.pid}" in health.checks[0]["detail"]
        assert not verify.orphans(s, ["demo_api"]).ok

    out = rig.inv_json("verify.tree", "demo_api", code=1)
    assert out["hosts"][0]["checks"][0]["offenders"][0]["pid"] == hand.pid
    r = rig.inv_cmd("verify.tree", "demo_api")
    assert r.returncode == 1
    assert f"! pid {hand.pid} (ppid {os.getpid()})" in r.stdout


def test_verify_orphans_fails_after_the_supervisor_is_sigkilled_and_passes_after_stop(rig: Rig) -> None:
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
        daemon = rig.state("demo_daemon")["pid"]
        api = api_pid(s)
        os.kill(daemon, signal.SIGKILL)  # the API is left behind, re-parented
        wait_until(lambda: (process_ids(api) or {}).get("ppid") not in (None, daemon), 5)

        report = verify.orphans(s)
        assert not report.ok
        c = by_service(report)["demo_api"]
        assert [o["pid"] for o in c["offenders"]] == [api]
        reason = c["offenders"][0]["reason"]
        assert reason.startswith("its supervisor demo_daemon is not running")
        if process_ids(api)["ppid"] == 1:
            assert "re-parented to init (ppid 1): an orphan" in reason
        assert by_service(report)["demo_daemon"]["ok"]  # nothing of the daemon's is left

        tree = by_service(verify.tree(s, ["demo_api"]))["demo_api"]
        assert not tree["ok"] and "its supervisor demo_daemon is not running" in tree["detail"]
        assert f"pid {api}" in tree["detail"]

        stopped = control.stop(s)  # sweeps the orphan
        assert stopped.ok, stopped.services
        assert verify.orphans(s).ok
    assert not pid_alive(api)


def test_verify_heartbeat_fails_once_the_worker_freezes(rig: Rig) -> None:
    rig.write(rig.verify_demo(worker_flags="--freeze-after 0.5", max_age=1))
    with rig.session() as s:
        rig.start_ok(s, "demo_worker")
        worker = rig.state("demo_worker")["pid"]

        def stale():
            c = verify.heartbeat(s, ["demo_worker"]).checks[0]
            return c if not c["ok"] else None

        c = wait_until(stale, 6, interval=0.1, message="the frozen heartbeat to go stale")
        assert c["age"] > 1 and c["max_age"] == 1
        assert c["detail"].endswith("s old, max_age 1s: STALE")
        assert pid_alive(worker)  # frozen, not dead: only the heartbeat tells
        assert by_service(verify.tree(s, ["demo_worker"]))["demo_worker"]["ok"]

        os.unlink(rig.state_dir / "worker-heartbeat.json")
        c = verify.heartbeat(s, ["demo_worker"]).checks[0]
        assert not c["ok"] and c["detail"].endswith("worker-heartbeat.json does not exist")
    out = rig.inv_json("verify.heartbeat", "demo_worker", code=1)
    assert "does not exist" in out["hosts"][0]["checks"][0]["detail"]


# --- verify.all runs what hosts.toml declares ----------------------------------------------------


def test_verify_all_runs_a_declared_restart_and_fails_when_the_child_does_not_come_back(rig: Rig) -> None:
    rig.write(rig.verify_demo(api={"checks": ["tree", "restart", "health"]}))
    with rig.session() as s:
        rig.start_ok(s)
        old = api_pid(s)
    out = rig.inv_json("verify.all", code=0)
    got = [(c["service"], c["name"]) for c in out["hosts"][0]["checks"]]
    assert got[:5] == [
        ("demo_daemon", "tree"),
        ("demo_daemon", "orphans"),
        ("demo_api", "tree"),
        ("demo_api", "restart"),
        ("demo_api", "health"),
    ]
    assert ("demo_worker", "heartbeat") in got
    restart = out["hosts"][0]["checks"][3]
    assert restart["ok"] and restart["old_pid"] == old and not pid_alive(old)

    # the same declaration on a daemon that does not restart its child: verify.all fails
    with rig.session() as s:
        control.stop(s)
    rig.write(rig.verify_demo(daemon_flags="--no-restart", api={"checks": ["restart", "health"]}))
    with rig.session() as s:
        rig.start_ok(s)
        report = verify.verify_all(s, restart_timeout=0.5)
    assert not report.ok
    assert [c["name"] for c in report.failed] == ["restart", "health"]
    assert "no new process matching" in report.failed[0]["detail"]


def test_one_unreachable_host_fails_alone(local_rig: Rig, sshd) -> None:
    rig = local_rig
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s, "demo_daemon")
    text = rig.inv_path.read_text()
    text = f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n' + text
    text += '\n[hosts.dead]\nssh = "opsdead"\npath = "/srv"\nservices = []\nconnect_timeout = 3\n'
    rig.inv_path.write_text(text)
    out = rig.inv_json("verify.orphans", "--host", "all", code=1)
    hosts = {h["host"]: h for h in out["hosts"]}
    assert hosts["box"]["ok"] and len(hosts["box"]["checks"]) == 3
    assert not hosts["dead"]["ok"] and hosts["dead"]["error"]


def test_verify_tree_fails_when_a_service_runs_twice_or_not_at_all(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s, "demo_worker")
        worker = rig.state("demo_worker")["pid"]
        assert by_service(verify.tree(s, ["demo_worker"]))["demo_worker"]["ok"]
        # a second copy, started by hand with the very same command line
        cmd = rig.host.service("demo_worker").cmd.split()
        copy, log = rig.tracker.start(cmd, cwd=rig.checkout)
        wait_for_text(log, f"worker ready pid {copy.pid}")
        c = by_service(verify.tree(s, ["demo_worker"]))["demo_worker"]
        assert not c["ok"] and c["detail"].startswith(f"demo_worker runs as pid {worker}, but it runs twice")
        assert [o["pid"] for o in c["offenders"]] == [copy.pid]
        inst = verify.verify_all(s)
        assert [(c["service"], c["name"]) for c in inst.failed] == [
            ("demo_daemon", "tree"),  # not started in this test
            ("demo_api", "tree"),
            ("demo_api", "health"),
            ("demo_worker", "tree"),
            ("demo_worker", "instances"),
            ("demo_worker", "orphans"),
        ]
        control.stop(s)
        c = by_service(verify.tree(s, ["demo_worker"]))["demo_worker"]
        assert not c["ok"] and c["detail"] == "demo_worker is not running (no live pid recorded by this tool)"
