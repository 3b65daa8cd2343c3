"""The supervisor's policy with injected clocks (no processes): uptime and backoff follow the
monotonic clock whatever the wall clock does; a torn heartbeat read is not a freeze until reads
fail for max_age; max_restarts ends in fatal; a failed state write is counted, never raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ops.agent import supervisor
from ops.agent.supervisor import Supervisor


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def step(self, seconds: float, wall: float | None = None) -> None:
        self.mono += seconds
        self.wall += seconds if wall is None else wall


class FakeChild:
    pid = 4242

    def poll(self) -> None:
        return None


def make(tmp_path: Path, clocks: Clocks, **spec: Any) -> Supervisor:
    base = {"name": "svc", "argv": ["true"], "cwd": str(tmp_path),
            "state_path": str(tmp_path / "state.json")}
    base.update(spec)
    log = (tmp_path / "sup.log").open("ab")  # noqa: SIM115 (kept open as long as the supervisor)
    sup = Supervisor(base, clock=lambda: clocks.mono, wall=lambda: clocks.wall, sleep=lambda s: None,
                     log_fd=log.fileno())
    sup.log_file = log  # type: ignore[attr-defined]
    return sup


def running(sup: Supervisor, clocks: Clocks) -> None:
    sup.child, sup.child_started, sup.state = FakeChild(), clocks.mono, "running"
    sup.hb_changed = clocks.mono


def test_uptime_is_measured_on_the_monotonic_clock_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    clocks = Clocks()
    sup = make(tmp_path, clocks, restart={"policy": "always", "breaker": 1, "min_uptime": 30})
    running(sup, clocks)
    clocks.step(40, wall=-3600)  # 40 s of real uptime while NTP steps the clock back an hour

    sup.on_exit(1)

    assert sup.state == "backoff" and sup.short_runs == []  # not a short run: no breaker


def test_a_backoff_is_not_cut_short_when_the_wall_clock_jumps_forward(tmp_path: Path) -> None:
    clocks = Clocks()
    sup = make(tmp_path, clocks, restart={"policy": "always", "backoff": 60, "min_uptime": 0})
    running(sup, clocks)
    sup.on_exit(1)
    exited_at = clocks.wall
    clocks.step(1, wall=86400)  # a Pi without an RTC learns the date

    assert sup.tick() and sup.child is None and sup.state == "backoff"
    assert sup.next_try - clocks.mono == 59
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["next_try"] == exited_at + 60  # shown on the wall clock, counted on the other


def write_hb(tmp_path: Path, text: str) -> dict:
    hb = tmp_path / "hb.json"
    hb.write_text(text)
    return {"file": str(hb), "field": "unix_ts", "max_age": 2.0}


def test_a_torn_heartbeat_read_is_not_a_freeze_until_reads_fail_for_max_age(tmp_path: Path) -> None:
    clocks = Clocks()
    hb = write_hb(tmp_path, json.dumps({"unix_ts": clocks.wall}))
    sup = make(tmp_path, clocks, heartbeat=hb, restart={"policy": "always"})
    running(sup, clocks)
    stopped: list[str] = []
    sup.stop_child = lambda reason: stopped.append(reason)  # type: ignore[method-assign]
    clocks.step(3)
    Path(hb["file"]).write_text('{"unix_ts": 17')  # torn
    sup.check_heartbeat()
    clocks.step(1)
    Path(hb["file"]).write_text(json.dumps({"unix_ts": clocks.wall}))  # whole again
    sup.check_heartbeat()
    clocks.step(1)
    Path(hb["file"]).write_text("")  # torn again: a new run of bad reads
    sup.check_heartbeat()
    clocks.step(1.5)
    sup.check_heartbeat()
    assert stopped == []

    clocks.step(1)  # bad on every read for 2.5 s > max_age
    sup.check_heartbeat()

    assert stopped == ["frozen"] and sup.last_reason.startswith("frozen:")


def test_a_wall_clock_step_alone_does_not_make_a_fresh_heartbeat_look_frozen(tmp_path: Path) -> None:
    clocks = Clocks()
    hb = write_hb(tmp_path, json.dumps({"unix_ts": clocks.wall}))
    sup = make(tmp_path, clocks, heartbeat=hb, restart={"policy": "always"})
    running(sup, clocks)
    stopped: list[str] = []
    sup.stop_child = lambda reason: stopped.append(reason)  # type: ignore[method-assign]
    for _ in range(3):
        clocks.step(1)
        Path(hb["file"]).write_text(json.dumps({"unix_ts": clocks.wall}))
        sup.check_heartbeat()
    clocks.step(0.6, wall=3600)  # the clock jumps an hour: the last heartbeat looks an hour old

    sup.check_heartbeat()
    assert stopped == []
    clocks.step(2.5)  # ...but it really stops changing: frozen
    sup.check_heartbeat()
    assert stopped == ["frozen"]


def test_max_restarts_ends_in_fatal_whatever_the_uptime(tmp_path: Path) -> None:
    clocks = Clocks()
    sup = make(tmp_path, clocks, restart={"policy": "always", "min_uptime": 1, "max_restarts": 2})
    for _ in range(2):
        running(sup, clocks)
        clocks.step(100)
        sup.on_exit(1)
        assert sup.state == "backoff"
    running(sup, clocks)
    clocks.step(100)
    sup.on_exit(1)

    assert sup.state == "fatal" and sup.fatal_reason == "max_restarts" and sup.restarts == 2
    assert "CRITICAL svc: restarted 2 times (max_restarts 2)" in (tmp_path / "sup.log").read_text()


def test_a_state_write_that_fails_is_counted_and_retried_not_raised(tmp_path: Path, monkeypatch) -> None:
    clocks = Clocks()
    sup = make(tmp_path, clocks, restart={"policy": "always"})

    def full(path: str, data: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(supervisor, "write_json_atomic", full)
    sup.save()
    assert sup.write_errors["state"]["count"] == 1 and sup.unsaved is not None

    monkeypatch.undo()
    running(sup, clocks)
    clocks.step(supervisor.SAVE_RETRY)
    sup.tick()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["write_errors"]["state"]["last"] == "No space left on device" and sup.unsaved is None
