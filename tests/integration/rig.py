"""The rig of the lifecycle, supervision and verify tests: a throwaway checkout, inventory and
state dir per test, on the `local` host or on the real sshd host `opstest` (same inventory shape,
different state dirs/ports).

Every service runs from a copy of examples/demo and tests/fixtures/services under the test's own
tmp dir, so every process the tool starts carries that unique path in its command line: patterns
never touch another test's (or another engineer's) processes, and teardown kills whatever is left
by that path, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from ops import control, inventory
from ops.inventory import Host, Inventory
from ops.session import HostSession, connect
from tests.harness import ProcessTracker, free_port, kill_until_none_left, processes_with, wait_until

REPO = Path(__file__).resolve().parents[2]
HOST = "box"
PY = sys.executable


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_tables(tables: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, table in tables.items():
        out.append(f"[{name}]")
        out.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())
        out.append("")
    return "\n".join(out)


class Rig:
    def __init__(self, kind: str, root: Path, ssh_config: str | None, tracker: ProcessTracker) -> None:
        self.kind = kind  # "local" | "ssh"
        self.root = root
        self.ssh_config = ssh_config
        self.tracker = tracker
        self.token = "tok-" + secrets.token_hex(12)
        self.checkout = root / "checkout"
        shutil.copytree(REPO / "examples" / "demo", self.checkout / "demo")
        shutil.copytree(REPO / "tests" / "fixtures" / "services", self.checkout / "services")
        self.state_dir = root / f"state-{kind}"
        self.secret_dir = root / "secrets"
        self.secret_dir.mkdir()
        self.env_file = self.secret_dir / "demo.env"
        self.env_file.write_text(f"# written by the test\nDEMO_TOKEN={self.token}\n")
        self.token_file = self.secret_dir / "demo.token"
        self.token_file.write_text(self.token + "\n")
        self.inv_path = root / "hosts.toml"
        self.api_port = free_port()
        self.inv: Inventory | None = None
        self._agent: HostSession | None = None

    # --- building the inventory ---------------------------------------------------------

    def script(self, name: str, *args: Any, python: str = "python3") -> str:
        """A cmd running a fixture service from this test's checkout."""
        return " ".join([python, str(self.checkout / "services" / name), *map(str, args)])

    def pattern(self, name: str) -> str:
        """A pgrep -f pattern matching a fixture service of this test (and only of this test)."""
        return re.escape(str(self.checkout / "services" / name))

    def log(self, service: str) -> Path:
        return self.state_dir / "logs" / f"{service}.log"

    def supervisor_log(self, service: str) -> Path:
        """The tool's supervisor's own lines for a service with a restart policy."""
        return self.state_dir / "logs" / f"{service}.supervisor.log"

    def demo(
        self,
        *,
        header_file: Path | None = None,
        env: dict[str, str] | None = None,
        python: str = "python3",
        daemon_flags: str = "",
        worker_interval: float = 0.2,
        worker_flags: str = "",
    ) -> dict[str, dict[str, Any]]:
        """The demo services (daemon supervising api, worker after daemon), as in hosts.toml."""
        daemon: dict[str, Any] = {
            # no trailing blank: the default match is the escaped cmd, blanks included
            "cmd": f"{python} {self.checkout}/demo/daemon.py auto --api-port ${{port:demo_api}}"
            f" --api-log ${{state_dir}}/logs/demo_api.log {daemon_flags}".rstrip(),
            "env_file": str(self.env_file),
            "children": ["demo_api"],
            "ready": {"log": "auto-answering"},
        }
        if env:
            daemon["env"] = env
        return {
            "demo_daemon": daemon,
            "demo_api": {
                "match": re.escape(f"{self.checkout}/demo/api.py") + r" --port ${port}",
                "port": self.api_port,
                "health": {
                    "url": "http://127.0.0.1:${port}/v1/lookup?name=alice",
                    "body": "alice",
                    "header_files": {"X-Demo-Token": str(header_file or self.token_file)},
                },
            },
            "demo_worker": {
                "cmd": f"{python} {self.checkout}/demo/worker.py --interval {worker_interval}"
                f" --heartbeat ${{state_dir}}/worker-heartbeat.json {worker_flags}".rstrip(),
                "after": ["demo_daemon"],
                "ready": {"log": "worker ready"},
            },
        }

    def verify_demo(
        self,
        daemon_flags: str = "",
        worker_flags: str = "",
        max_age: float = 10,
        api: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The demo with what the verify checks look at: the API's log, a fast restart by the daemon,
        the worker's heartbeat (max_age) and max_instances; `api` adds keys to demo_api."""
        services = self.demo(
            python=PY,
            daemon_flags=f"--restart-delay 0.2 {daemon_flags}",
            worker_interval=0.1,
            worker_flags=worker_flags,
        )
        services["demo_api"].update(log="${state_dir}/logs/demo_api.log", **(api or {}))
        services["demo_worker"].update(
            heartbeat={"file": "${state_dir}/worker-heartbeat.json", "field": "unix_ts", "max_age": max_age},
            max_instances=1,
        )
        return services

    def spawner(self, copies: int, every: float, max_instances: int | None = 1) -> dict[str, dict[str, Any]]:
        """A spawn loop (runbook 2): a coordinator (`spawner`) that keeps starting workers
        (`loop_worker`, its children: each one a separate instance)."""
        svc: dict[str, Any] = {
            "cmd": self.script(
                "spawner.py", "--copies", copies, "--every", every, "--child-arg", "loop", python=PY
            ),
            "match": self.pattern("spawner.py --copies"),
            "children": ["loop_worker"],
        }
        worker: dict[str, Any] = {"match": self.pattern("spawner.py --child loop")}
        if max_instances is not None:
            worker["max_instances"] = max_instances
        return {"spawner": svc, "loop_worker": worker}

    def write(
        self,
        services: dict[str, dict[str, Any]],
        host_services: list[str] | None = None,
        host_keys: dict[str, Any] | None = None,
        **defaults: Any,
    ) -> Inventory:
        """Write and load hosts.toml: the host `box` with these services; `host_keys` go into the
        host's table, keyword arguments into [defaults]."""
        host: dict[str, Any] = {
            "path": str(self.checkout),
            "state_dir": str(self.state_dir),
            "services": host_services or [n for n, s in services.items() if "cmd" in s],
            **(host_keys or {}),
        }
        if os.environ.get("OPS_TEST_AGENT_PYTHON"):  # e.g. a python3.8, to prove the agent runs on it
            host["python"] = os.environ["OPS_TEST_AGENT_PYTHON"]
        if self.kind == "local":
            host["local"] = True
        else:
            host["ssh"] = "opstest"
        tables: dict[str, dict[str, Any]] = {}
        if self.ssh_config:
            tables["ssh"] = {"config": self.ssh_config}
        tables["defaults"] = {"ready_timeout": 10, "stop_timeout": 3, **defaults}
        tables[f"hosts.{HOST}"] = host
        for name, table in services.items():
            tables[f"services.{name}"] = table
        self.inv_path.write_text(toml_tables(tables))
        self.close()
        self.inv = inventory.load(self.inv_path)
        return self.inv

    @property
    def host(self) -> Host:
        assert self.inv is not None, "call rig.write(...) first"
        return self.inv.host(HOST)

    # --- driving the tool ---------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[HostSession]:
        """A fresh session (connection + agent), closed at the end of the block."""
        assert self.inv is not None, "call rig.write(...) first"
        with connect(self.inv, self.host) as s:
            yield s

    @property
    def agent(self) -> HostSession:
        """One session for the whole test, like one task run: connect and agent start paid once."""
        if self._agent is None:
            assert self.inv is not None, "call rig.write(...) first"
            self._agent = HostSession(self.inv, self.host).open()
        return self._agent

    def close(self) -> None:
        if self._agent is not None:
            agent, self._agent = self._agent, None
            agent.close()

    def start(self, *names: str, on_event=None) -> control.PhaseResult:
        return control.start(self.agent, list(names), on_event=on_event)

    def start_ok(self, session: HostSession, *names: str) -> None:
        """Start in the given session; every service must start."""
        result = control.start(session, list(names))
        assert result.ok, json.dumps(result.services, indent=1)

    def stop(self, *names: str, on_event=None) -> control.PhaseResult:
        return control.stop(self.agent, list(names), on_event=on_event)

    def status(self, *names: str) -> dict[str, dict]:
        return {r["name"]: r for r in control.status(self.agent, list(names))}

    def inv_cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real command: `python3 -m invoke ARGS` in the repository, on this inventory."""
        env = dict(os.environ, OPS_INVENTORY=str(self.inv_path))
        return subprocess.run(
            [PY, "-m", "invoke", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def inv_json(self, *args: str, code: int, timeout: float = 60) -> dict[str, Any]:
        """Run `inv ARGS --json`, check its exit code, return the parsed output."""
        r = self.inv_cmd(*args, "--json", timeout=timeout)
        assert r.returncode == code, f"exit {r.returncode}, wanted {code}\n{r.stdout}\n{r.stderr}"
        assert self.token not in r.stdout + r.stderr
        return json.loads(r.stdout)

    # --- looking at the machine ---------------------------------------------------------

    def running(self) -> dict[int, str]:
        """Every live process started from this test's checkout."""
        return processes_with(str(self.checkout))

    def pids_of(self, needle: str) -> list[int]:
        return sorted(pid for pid, cmd in self.running().items() if needle in cmd)

    def wait_none_running(self, timeout: float = 5.0) -> None:
        try:
            wait_until(lambda: not self.running(), timeout)
        except TimeoutError:
            raise AssertionError(f"processes left running: {self.running()}") from None

    def state(self, service: str) -> dict[str, Any]:
        """The service's state file ({} while there is none)."""
        path = self.state_dir / "services" / f"{service}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def kill_everything(self) -> None:
        """SIGKILL every process whose command line names this test's dir until none is left (best
        effort): the services (the checkout) and the tool's supervisors (`supervise <state_dir>/...`),
        which would otherwise outlive the test and restart their children."""
        with suppress(TimeoutError):
            kill_until_none_left(lambda: processes_with(f"{self.root}/"), 10.0)


def text_of(result: control.PhaseResult) -> str:
    return json.dumps(result.services)


def by_name(result: control.PhaseResult) -> dict[str, dict]:
    return {r["name"]: r for r in result.services}


def make_rig(request: Any, tmp_path: Path, kind: str) -> Iterator[Rig]:
    ssh_config = str(request.getfixturevalue("sshd").ssh_config_path) if kind == "ssh" else None
    tracker = ProcessTracker(tmp_path / "tracked")
    rig = Rig(kind, tmp_path, ssh_config, tracker)
    try:
        yield rig
    finally:
        try:
            rig.close()
        finally:
            tracker.cleanup()
            rig.kill_everything()


@pytest.fixture(params=["local", "ssh"], name="rig")
def rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    """The same test on the `local` host and on the real sshd host `opstest`."""
    yield from make_rig(request, tmp_path, request.param)


@pytest.fixture(name="local_rig")
def local_rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    """For tests whose point does not depend on the transport."""
    yield from make_rig(request, tmp_path, "local")


@pytest.fixture(name="ssh_rig")
def ssh_rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(request, tmp_path, "ssh")
