"""Checks that cannot lie, on the ownership model (issue 12, items 1 and 4), on the `local` host
and over the real sshd: a service whose own process is down fails `verify.tree` although the
tool's supervisor lives, and a health answer from a stranger that took the port is not the
service's health. Each broken case is shown failing beside its healthy twin."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.harness import pid_alive, port_open, wait_until
from tests.integration.rig import PY, Rig, by_name, rig_fixture  # noqa: F401


def _policy_service(rig: Rig, **restart) -> None:
    rig.write(
        {
            "kept": {
                "cmd": rig.script("idle.py", "kept", python=PY),
                "ready": {"log": "idle ready"},
                "checks": ["tree"],
                **restart,
            }
        }
    )


def _child(rig: Rig) -> int:
    return rig.status()["kept"]["pid"]


def test_verify_tree_fails_while_the_supervised_service_sits_in_backoff(rig: Rig) -> None:
    _policy_service(rig, restart="always", backoff=60, min_uptime=0.1, breaker=5)
    assert by_name(rig.start())["kept"]["outcome"] == "started"
    child = _child(rig)
    healthy = rig.inv_json("verify.tree", "kept", code=0)["hosts"][0]["checks"][0]
    assert healthy["ok"] and f"pid {child} runs under the tool's supervisor" in healthy["detail"], healthy

    os.kill(child, signal.SIGKILL)  # the service crashes; its supervisor waits 60 s to restart it
    wait_until(lambda: rig.status()["kept"]["state"] == "backoff", 10)

    tree = rig.inv_json("verify.tree", "kept", code=1)["hosts"][0]["checks"][0]
    assert not tree["ok"] and "kept is down" in tree["detail"] and "backoff (next try in" in tree["detail"]
    everything = rig.inv_json("verify.all", code=1)["hosts"][0]["checks"]
    assert not [c for c in everything if c["name"] == "tree"][0]["ok"]


def test_verify_tree_fails_when_the_supervisor_gave_up(rig: Rig) -> None:
    _policy_service(rig, restart="always", backoff=0.1, min_uptime=3600, breaker=1)
    rig.start()
    child = _child(rig)
    os.kill(child, signal.SIGKILL)  # one short run is enough to trip a breaker of 1
    wait_until(lambda: rig.status()["kept"]["state"] == "fatal", 10)

    tree = rig.inv_json("verify.tree", "kept", code=1)["hosts"][0]["checks"][0]

    assert not tree["ok"], tree
    assert "kept is" in tree["detail"] and ("fatal" in tree["detail"] or "not running" in tree["detail"])


def _api_service(rig: Rig) -> None:
    port = rig.api_port
    rig.write(
        {
            "api": {
                "cmd": rig.script("http_status.py", "--port", port, "--status", 200, python=PY),
                "port": port,
                "health": {"url": f"http://127.0.0.1:{port}/health"},
                "checks": ["health"],
            }
        }
    )


def test_a_stranger_answering_on_the_services_port_is_not_its_health(rig: Rig) -> None:
    _api_service(rig)
    pid = by_name(rig.start())["api"]["pid"]
    healthy = rig.inv_json("verify.health", code=0)["hosts"][0]["checks"][0]
    assert healthy["ok"] and healthy["detail"].endswith("answered 200"), healthy

    os.kill(pid, signal.SIGKILL)  # the service dies, a stranger takes its port and answers 200
    wait_until(lambda: not pid_alive(pid), 5)
    wait_until(lambda: not port_open(rig.api_port), 5)
    stranger = subprocess.Popen(
        [
            PY,
            str(rig.checkout / "services" / "http_status.py"),
            "--port",
            str(rig.api_port),
            "--status",
            "200",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open(rig.api_port), 10)
        check = rig.inv_json("verify.health", code=1)["hosts"][0]["checks"][0]
        assert not check["ok"], check
        assert f"answered 200, but port {rig.api_port} is held by pid {stranger.pid}" in check["detail"]
        row = [c for c in rig.inv_json("verify.all", code=1)["hosts"][0]["checks"] if c["name"] == "health"]
        assert not row[0]["ok"]
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait(5)


def test_a_redirect_is_the_answer_never_followed(rig: Rig) -> None:
    port = rig.api_port
    rig.write(
        {
            "api": {
                "cmd": rig.script(
                    "http_status.py", "--port", port, "--status", 302, "--location", "/ok", python=PY
                ),
                "port": port,
                "health": {
                    "url": f"http://127.0.0.1:{port}/health",
                    "header_files": {"X-Token": str(rig.token_file)},
                },
                "ready": {"health": False},
                "checks": ["health"],
            }
        }
    )
    rig.start()
    check = rig.inv_json("verify.health", code=1)["hosts"][0]["checks"][0]
    assert not check["ok"] and "answered 302, expected 200" in check["detail"], check


def test_header_files_are_never_sent_to_another_host(rig: Rig) -> None:
    rig.write(
        {
            "api": {
                "cmd": rig.script("http_status.py", "--port", rig.api_port, "--status", 200, python=PY),
                "port": rig.api_port,
                "health": {
                    "url": "http://192.0.2.1:9/health",
                    "header_files": {"X-Token": str(rig.token_file)},
                    "timeout": 1,
                },
                "ready": {"health": False},
                "checks": ["health"],
            }
        }
    )
    rig.start()
    check = rig.inv_json("verify.health", code=1)["hosts"][0]["checks"][0]
    assert not check["ok"] and "header_files are only sent to this host's own services" in check["detail"]
