"""The agent imports what an operation uses when the operation first runs: its start-up and a ping
load none of the lifecycle, checks and deploy modules nor the heavy stdlib ones; the first
deploy or check op loads its module (and the op runs)."""

from __future__ import annotations

import json
import subprocess
import sys

from ops import agentpkg

PROBE = r"""
import io, json, sys
sys.path.insert(0, sys.argv[1])
from ops.agent import server
out = io.StringIO()
server.serve(io.StringIO(sys.argv[2]), out)
events = [json.loads(line) for line in out.getvalue().splitlines()]
print(json.dumps({"events": events, "modules": sorted(sys.modules)}))
"""
HEAVY = ["ops.agent.checks", "ops.agent.deployops", "ops.agent.lifecycle", "ops.agent.gates",
         "dataclasses", "typing", "traceback", "subprocess", "tempfile", "datetime", "zipfile"]


def _run(tmp_path, requests: list[dict]) -> dict:
    b = agentpkg.bundle()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    text = "".join(json.dumps(r) + "\n" for r in requests)
    r = subprocess.run([sys.executable, "-S", "-c", PROBE, str(pyz), text], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_start_up_and_a_ping_import_nothing_an_operation_does_not_use(tmp_path):
    got = _run(tmp_path, [{"id": 1, "op": "ping"}])
    assert got["events"][1]["data"]["pong"] is True
    loaded = [m for m in HEAVY if m in got["modules"]]
    assert loaded == []


def test_the_first_deploy_op_loads_its_module_and_runs(tmp_path):
    got = _run(tmp_path, [{"id": 1, "op": "journal_read",
                           "args": {"host": {"state_dir": str(tmp_path / "st"), "path": str(tmp_path)}}}])
    assert got["events"][1]["event"] == "result", got["events"]
    assert "ops.agent.deployops" in got["modules"]


def test_the_agent_leaves_at_the_end_of_its_input_with_every_reply_written(tmp_path):
    # it skips the interpreter's teardown (os._exit) once its work is done: exit 0, nothing lost,
    # and no atexit hook of the interpreter runs (the client's close no longer waits for them)
    b = agentpkg.bundle()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    marker = tmp_path / "teardown-ran"
    launch = ("import atexit, runpy, sys\n"
              f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    requests = "".join(json.dumps({"id": i, "op": "ping"}) + "\n" for i in range(1, 51))
    r = subprocess.run([sys.executable, "-S", "-c", launch, str(pyz)], input=requests, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "hello"
    assert [e["id"] for e in events[1:]] == list(range(1, 51))
    assert not marker.exists()
