"""A rig for the verify tests: the demo (and fixture services) in a throwaway checkout, an
inventory and a state dir per test, on the `local` host or on the real sshd host `opstest`.

The services run from copies under the test's tmp dir, so every process the tool starts carries
that unique path in its command line: patterns never match another test's processes, and the
teardown kills whatever is still running from that path, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ops import control, inventory
from ops.inventory import Host, Inventory
from ops.session import HostSession, connect
from tests.harness import ProcessTracker, free_port, pid_alive, wait_until

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


def processes_with(needle: str) -> dict[int, str]:
    """{pid: cmdline} of live processes whose command line contains needle (not this one)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if needle in text and pid_alive(int(entry)):
            found[int(entry)] = text
    return found


class Rig:
    def __init__(self, kind: str, root: Path, ssh_config: str | None, tracker: ProcessTracker) -> None:
        self.kind = kind
        self.root = root
        self.ssh_config = ssh_config
        self.tracker = tracker
        self.token = "tok-" + secrets.token_hex(12)
        self.checkout = root / "checkout"
        shutil.copytree(REPO / "examples" / "demo", self.checkout / "demo")
        shutil.copytree(REPO / "tests" / "fixtures" / "services", self.checkout / "services")
        self.state_dir = root / "state"
        secret_dir = root / "secrets"
        secret_dir.mkdir()
        self.env_file = secret_dir / "demo.env"
        self.env_file.write_text(f"# written by the test\nDEMO_TOKEN={self.token}\n")
        self.token_file = secret_dir / "demo.token"
        self.token_file.write_text(self.token + "\n")
        self.inv_path = root / "hosts.toml"
        self.api_port = free_port()
        self.inv: Inventory | None = None

    # --- the inventory ------------------------------------------------------------------

    def demo(
        self,
        daemon_flags: str = "",
        worker_flags: str = "",
        max_age: float = 10,
        api: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The demo: a daemon supervising the API (token-protected lookup), and a worker."""
        return {
            "demo_daemon": {
                # no trailing blank: the default match is the escaped cmd, blanks included
                "cmd": f"{PY} {self.checkout}/demo/daemon.py auto --api-port ${{port:demo_api}}"
                f" --api-log ${{state_dir}}/logs/demo_api.log --restart-delay 0.2 {daemon_flags}".rstrip(),
                "env_file": str(self.env_file),
                "children": ["demo_api"],
                "ready": {"log": "auto-answering"},
            },
            "demo_api": {
                "match": re.escape(f"{self.checkout}/demo/api.py") + r" --port ${port}",
                "port": self.api_port,
                "log": "${state_dir}/logs/demo_api.log",
                "health": {
                    "url": "http://127.0.0.1:${port}/v1/lookup?name=alice",
                    "body": "alice",
                    "header_files": {"X-Demo-Token": str(self.token_file)},
                },
                **(api or {}),
            },
            "demo_worker": {
                "cmd": f"{PY} {self.checkout}/demo/worker.py --interval 0.1"
                f" --heartbeat ${{state_dir}}/worker-heartbeat.json {worker_flags}".rstrip(),
                "after": ["demo_daemon"],
                "ready": {"log": "worker ready"},
                "heartbeat": {
                    "file": "${state_dir}/worker-heartbeat.json",
                    "field": "unix_ts",
                    "max_age": max_age,
                },
                "max_instances": 1,
            },
        }

    def spawner(self, copies: int, every: float, max_instances: int | None = 1) -> dict[str, dict[str, Any]]:
        """A spawn loop (runbook 2): a parent that keeps starting children matching its pattern."""
        svc: dict[str, Any] = {
            "cmd": f"{PY} {self.checkout}/services/spawner.py --copies {copies} --every {every}"
            " --child-arg loop",
            "match": re.escape(f"{self.checkout}/services/spawner.py"),
        }
        if max_instances is not None:
            svc["max_instances"] = max_instances
        return {"spawner": svc}

    def write(self, services: dict[str, dict[str, Any]], **host_keys: Any) -> Inventory:
        host: dict[str, Any] = {
            "path": str(self.checkout),
            "state_dir": str(self.state_dir),
            "services": [n for n, s in services.items() if "cmd" in s],
            **host_keys,
        }
        if self.kind == "local":
            host["local"] = True
        else:
            host["ssh"] = "opstest"
        tables: dict[str, dict[str, Any]] = {}
        if self.ssh_config:
            tables["ssh"] = {"config": self.ssh_config}
        tables["defaults"] = {"ready_timeout": 10, "stop_timeout": 3}
        tables[f"hosts.{HOST}"] = host
        for name, table in services.items():
            tables[f"services.{name}"] = table
        lines = []
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())
            lines.append("")
        self.inv_path.write_text("\n".join(lines))
        self.inv = inventory.load(self.inv_path)
        return self.inv

    @property
    def host(self) -> Host:
        assert self.inv is not None, "call rig.write(...) first"
        return self.inv.host(HOST)

    # --- driving the tool ---------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[HostSession]:
        assert self.inv is not None, "call rig.write(...) first"
        with connect(self.inv, self.host) as s:
            yield s

    def start(self, session: HostSession, *names: str) -> None:
        result = control.start(session, list(names))
        assert result.ok, json.dumps(result.services, indent=1)

    def inv_cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real command, `python3 -m invoke ARGS`, in the repository, on this inventory."""
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

    def state(self, service: str) -> dict[str, Any]:
        return json.loads((self.state_dir / "services" / f"{service}.json").read_text())

    def kill_everything(self) -> None:
        """SIGKILL every process started from this checkout, again and again until none is left
        (a spawn loop may start a new child between one look and the kill)."""

        def none_left() -> bool:
            left = self.running()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return not left

        try:
            wait_until(none_left, 10.0)
        except TimeoutError:
            pass


def make_rig(request: Any, tmp_path: Path, kind: str) -> Iterator[Rig]:
    ssh_config = str(request.getfixturevalue("sshd").ssh_config_path) if kind == "ssh" else None
    tracker = ProcessTracker(tmp_path / "tracked")
    rig = Rig(kind, tmp_path, ssh_config, tracker)
    try:
        yield rig
    finally:
        tracker.cleanup()
        rig.kill_everything()


@pytest.fixture(params=["local", "ssh"], name="rig")
def rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    """The same test on the `local` host and on the real sshd host `opstest`."""
    yield from make_rig(request, tmp_path, request.param)


@pytest.fixture(name="local_rig")
def local_rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(request, tmp_path, "local")


@pytest.fixture(name="ssh_rig")
def ssh_rig_fixture(request: Any, tmp_path: Path) -> Iterator[Rig]:
    yield from make_rig(request, tmp_path, "ssh")
