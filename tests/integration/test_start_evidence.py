"""A start is reported only on evidence: without declared gates the process must at least stay up;
a failed child gate shows the child's own log."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ops import control, inventory
from ops.session import connect
from tests.harness import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_host(tmp_path: Path):
    """(write(services_toml, names) -> session factory) on a local host in tmp_path."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "tests/fixtures/services", checkout / "services")
    shutil.copytree(REPO / "examples/demo", checkout / "demo")
    opened = []

    def write(services: str, names: list[str]):
        path = tmp_path / "hosts.toml"
        path.write_text(
            f'[hosts.box]\nlocal = true\npath = "{checkout}"\nstate_dir = "{tmp_path / "state"}"\n'
            f"services = {names!r}\n".replace("'", '"') + services)
        inv = inventory.load(path)
        ctx = connect(inv, inv.hosts["box"])
        session = ctx.__enter__()
        opened.append((ctx, session))
        return session

    yield write
    for ctx, session in opened:
        try:
            control.stop(session)
        finally:
            ctx.__exit__(None, None, None)


def test_a_service_without_gates_that_dies_at_once_is_not_started(local_host):
    s = local_host(f'[services.svc]\ncmd = "{sys.executable} services/crash_on_start.py --code 5"\n', ["svc"])
    [r] = control.start(s, ["svc"]).services
    assert r["outcome"] == "failed"
    assert r["failed_gate"] == "alive" and r["exit_code"] == 5
    assert "fatal: cannot start" in "\n".join(r["log_tail"])


def test_a_service_without_gates_counts_as_started_once_it_stayed_up(local_host):
    s = local_host(f'[services.svc]\ncmd = "{sys.executable} services/ignore_term.py"\nstop_timeout = 0.5\n',
                   ["svc"])
    [r] = control.start(s, ["svc"]).services
    assert r["outcome"] == "started"
    assert r["gates"][0]["name"] == "alive" and r["gates"][0]["elapsed"] >= 1.0


def test_a_failed_child_gate_shows_the_childs_own_log(local_host, tmp_path):
    port = free_port()
    s = local_host(
        f'[services.daemon]\ncmd = "{sys.executable} demo/daemon.py auto --api-port {port} '
        f'--api-log {tmp_path}/api.log"\nchildren = ["api"]\nready.timeout = 3\n'
        f'env = {{ DEMO_API_FAIL = "1" }}\n'
        f'[services.api]\nmatch = "demo/api\\\\.py --port {port}"\nport = {port}\n'
        f'log = "{tmp_path}/api.log"\n'
        f'health = {{ url = "http://127.0.0.1:{port}/health" }}\nready.timeout = 3\n', ["daemon"])
    [r, _child] = control.start(s, ["daemon"]).services
    assert r["outcome"] == "failed" and r["failed_gate"] == "api: health"
    tail = "\n".join(r["child_log_tails"]["api"])
    assert "GET /health 500" in tail
