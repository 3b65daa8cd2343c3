"""ops.control: ordering decided from the inventory (pure), one agent call per phase."""

from __future__ import annotations

from typing import Any

from ops import control, inventory
from ops.inventory import Host
from ops.session import HostSession


def make_host() -> Host:
    data = {
        "defaults": {"ready_timeout": 7, "stop_timeout": 2},
        "hosts": {
            "box": {
                "local": True,
                "path": "/srv/app",
                "state_dir": "/tmp/state",
                "services": ["worker", "db", "daemon"],
            }
        },
        "services": {
            "db": {"cmd": "db --serve"},
            "daemon": {"cmd": "daemon auto", "children": ["api"], "after": ["db"]},
            "api": {"match": r"api\.py", "port": 8770},
            "worker": {"cmd": "worker", "after": ["daemon"]},
        },
    }
    return inventory.parse(data, "hosts.toml").host("box")


def names(services: list[Any]) -> list[str]:
    return [s.name for s in services]


def test_start_order_follows_after_and_puts_children_after_their_supervisor() -> None:
    assert names(control.with_children(make_host(), None)) == ["db", "daemon", "api", "worker"]


def test_selecting_a_supervisor_brings_its_children() -> None:
    host = make_host()

    assert names(control.with_children(host, ["daemon"])) == ["daemon", "api"]
    assert names(control.with_children(host, ["worker", "db"])) == ["db", "worker"]
    assert names(control.with_children(host, ["api"])) == ["api"]


def test_stop_order_is_reverse_dependency_order_with_supervisors_before_children() -> None:
    host = make_host()

    assert names(control.stop_order(control.with_children(host, None))) == ["worker", "daemon", "api", "db"]
    assert names(control.stop_order(control.with_children(host, ["daemon"]))) == ["daemon", "api"]


def test_phase_timeouts_cover_every_service_wait() -> None:
    services = control.with_children(make_host(), None)

    # the agent may wait ready_timeout + a failed start's cleanup for each service in turn
    assert control.start_timeout(services) >= sum(s.ready.timeout + s.stop_timeout for s in services)
    # and stop_timeout then KILL (twice: the group, then the pattern sweep) for each
    assert control.stop_timeout(services) >= sum(2 * s.stop_timeout for s in services)


class FakeSession:
    """Records agent calls; answers each phase as the agent would for all-ok services."""

    def __init__(self, host: Host, ok: bool = True) -> None:
        self.host = host
        self.ok = ok
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def service_args(self, services: list[Any]) -> dict[str, Any]:
        return HostSession.service_args(self, services)  # type: ignore[arg-type]

    def host_args(self) -> dict[str, Any]:
        return {"name": self.host.name, "path": self.host.path, "state_dir": self.host.state_dir}

    def call(self, op: str, args: dict[str, Any] | None = None, on_event=None, timeout=None) -> Any:
        self.calls.append((op, args or {}))
        services = [{"name": s["name"], "outcome": "done"} for s in (args or {}).get("services", [])]
        return {"ok": self.ok, "services": services}


def test_each_phase_is_one_agent_call_whatever_the_number_of_services() -> None:
    session = FakeSession(make_host())

    started = control.start(session, None)  # type: ignore[arg-type]
    stopped = control.stop(session, None)  # type: ignore[arg-type]

    assert [op for op, _ in session.calls] == ["start", "stop"]
    assert [r["name"] for r in started.services] == ["db", "daemon", "api", "worker"]
    assert [r["name"] for r in stopped.services] == ["worker", "daemon", "api", "db"]


def test_restart_is_a_stop_call_then_a_start_call() -> None:
    session = FakeSession(make_host())

    result = control.restart(session, ["daemon"])  # type: ignore[arg-type]

    assert [(op, [s["name"] for s in a["services"]]) for op, a in session.calls] == [
        ("stop", ["daemon", "api"]),
        ("start", ["daemon", "api"]),
    ]
    assert [(r["phase"], r["name"]) for r in result.services] == [
        ("stop", "daemon"),
        ("stop", "api"),
        ("start", "daemon"),
        ("start", "api"),
    ]


def test_restart_does_not_start_when_the_stop_failed() -> None:
    session = FakeSession(make_host(), ok=False)

    result = control.restart(session, ["daemon"])  # type: ignore[arg-type]

    assert [op for op, _ in session.calls] == ["stop"]
    assert not result.ok


def test_logs_send_the_host_service_specs_so_the_agent_can_redact_their_secrets() -> None:
    host = make_host()
    session = FakeSession(host)

    control.logs(session, host.service("daemon"), 5)  # type: ignore[arg-type]

    ((op, args),) = session.calls
    assert op == "logs"
    assert args["lines"] == 5 and args["base"] == "/srv/app"
    assert args["path"] == "/tmp/state/logs/daemon.log"
    assert args["service"]["name"] == "daemon"
    assert [s["name"] for s in args["all_services"]] == ["db", "daemon", "api", "worker"]
