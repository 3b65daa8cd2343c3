"""The agent's own error events (an op that raised: its message and trace) never carry a secret:
neither one of the services the failed request named, nor one an earlier request read."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest

from ops.agent import secrets, server

SECRET = "s3cr3t-token-value-42"


def serve(lines: list[dict]) -> list[dict]:
    out = io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGPIPE)}
    try:
        server.serve(io.StringIO("".join(json.dumps(x) + "\n" for x in lines)), out)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return [json.loads(ln) for ln in out.getvalue().splitlines()][1:]  # after the hello


@pytest.fixture
def boom(monkeypatch: pytest.MonkeyPatch):
    def op(args, emit):
        raise RuntimeError(f"could not use DEMO_TOKEN={SECRET} for {args.get('what')}")

    monkeypatch.setitem(server.OPS, "boom", op)
    monkeypatch.setattr(secrets, "SEEN", set())


def test_an_error_quoting_a_secret_of_a_named_service_is_redacted(tmp_path: Path, boom) -> None:
    (tmp_path / "demo.env").write_text(f"DEMO_TOKEN={SECRET}\n")
    spec = {"name": "api", "env_file": "demo.env"}
    events = serve([{"id": 1, "op": "boom", "args": {"host": {"path": str(tmp_path)}, "services": [spec],
                                                     "what": "the api"}}])
    err = events[0]
    assert err["event"] == "error" and err["type"] == "RuntimeError"
    assert SECRET not in json.dumps(err)
    assert "DEMO_TOKEN=***" in err["message"] and "***" in err["trace"]


def test_a_secret_read_by_an_earlier_request_is_redacted_from_a_later_error(tmp_path: Path, boom) -> None:
    (tmp_path / "demo.env").write_text(f"DEMO_TOKEN={SECRET}\n")
    secrets.Secrets(str(tmp_path)).env_file("demo.env")  # what a status of that service reads
    events = serve([{"id": 2, "op": "boom", "args": {"what": "nothing named"}}])
    assert SECRET not in json.dumps(events[0])


def test_without_secrets_the_error_is_unchanged(boom) -> None:
    events = serve([{"id": 3, "op": "boom", "args": {"what": "x"}}])
    assert SECRET in events[0]["message"]  # nothing known to redact: the check above is not vacuous
