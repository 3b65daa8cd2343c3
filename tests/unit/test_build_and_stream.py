"""The agent's build runner (bounded tail, timeout kills the group) and its streamed requests
(raw bytes after the request line, copied to a file, the protocol in step afterwards)."""

from __future__ import annotations

import io
import json
import os

from ops.agent import build, server


def test_a_step_keeps_only_the_last_lines_of_its_output():
    cmd = "for i in $(seq 1 5000); do echo line $i; done; echo err >&2; exit 4"
    r = build.run_step(cmd, "/", dict(os.environ), 30)
    assert r["exit_code"] == 4 and not r["timed_out"]
    assert len(r["tail"]) == build.TAIL_LINES
    assert r["tail"][-1] == "err" and r["tail"][-2] == "line 5000"


def test_a_step_past_its_timeout_is_killed_with_its_children():
    r = build.run_step("echo started; sleep 300 & sleep 300", "/", dict(os.environ), 1)
    assert r["timed_out"] and r["tail"] == ["started"]
    assert r["duration"] < 1 + build.KILL_DRAIN + 5


def test_a_line_without_end_is_cut_not_held():
    r = build.run_step("head -c 5000000 /dev/zero | tr '\\0' x", "/", dict(os.environ), 30)
    assert r["exit_code"] == 0 and len(r["tail"]) == 1 and len(r["tail"][0]) == build.LINE_MAX


def test_a_streamed_request_lands_in_a_file_and_the_next_request_is_read_after_it(tmp_path):
    payload = os.urandom(700_000)
    seen = {}

    def op_size(args, emit):
        with open(args["_stream"], "rb") as f:
            seen["data"] = f.read()
        seen["path"] = args["_stream"]
        return {"size": len(seen["data"])}

    server.register("test_size", op_size)
    head = json.dumps({"id": 1, "op": "test_size", "args": {"host": {"state_dir": str(tmp_path)}},
                       "stream": len(payload)}).encode()
    inp = io.BytesIO(head + b"\n" + payload + b'{"id": 2, "op": "ping"}\n')
    out = io.StringIO()
    server._loop(inp, server.Channel(out))
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    assert events[0] == {"id": 1, "event": "result", "data": {"size": len(payload)}}
    assert events[1]["id"] == 2 and events[1]["data"]["pong"]
    assert seen["data"] == payload
    assert not os.path.exists(seen["path"])  # removed after the op
