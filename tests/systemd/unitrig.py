"""A per-test scene on the booted systemd box: the test services copied into a unique directory
in the box, units written into its /etc/systemd/system, and an inventory whose host `box` is the
box reached over SSH (as root, or as a plain user / a sudoer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from ops import inventory
from ops.session import HostSession, connect
from tests.integration.rig import toml_tables
from tests.systemd_rig import SystemdBox

REPO = Path(__file__).resolve().parents[2]

# A small service for units: prints lines, may listen on a port with /health, may crash, may spawn.
APP = r"""
import argparse, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=0)
p.add_argument("--health-status", type=int, default=200)
p.add_argument("--ready", default="app ready")
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--crash", type=int, default=None)
p.add_argument("--spawn", type=int, default=0)
p.add_argument("--every", type=float, default=0.5)
p.add_argument("--child", action="store_true")
p.add_argument("--tick", type=float, default=0.0)
a = p.parse_args()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if a.child:
    while True:
        time.sleep(1)
print("app starting pid %d token-len %d" % (os.getpid(), len(os.environ.get("APP_TOKEN", ""))), flush=True)
if a.crash is not None:
    time.sleep(0.2)
    print("app: fatal: cannot start", flush=True)
    sys.exit(a.crash)
time.sleep(a.delay)
for i in range(a.spawn):
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"])
    print("spawned worker %d" % (i + 1), flush=True)
    time.sleep(a.every)
if a.port:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok\n"
            self.send_response(a.health_status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", a.port), H)
    print(a.ready, flush=True)
    server.serve_forever()
print(a.ready, flush=True)
n = 0
while True:
    time.sleep(a.tick or 1)
    if a.tick:
        n += 1
        print("tick %d %s" % (n, os.environ.get("APP_TOKEN", "")), flush=True)
"""


class UnitScene:
    """One test's services and inventory on the box. ``alias``: sdbox (root), sdbox-user (no sudo),
    sdbox-admin (sudo without a password)."""

    def __init__(self, box: SystemdBox, local_dir: Path, alias: str = "sdbox") -> None:
        self.box = box
        self.alias = alias
        self.id = uuid.uuid4().hex[:8]
        self.dir = f"/srv/ops-{self.id}"  # the checkout in the box (unique: patterns never collide)
        self.local_dir = local_dir
        self.inv_path = local_dir / "hosts.toml"
        self.units: list[str] = []
        self.token = "tok-" + uuid.uuid4().hex
        user = {"sdbox": "root", "sdbox-user": "opsuser", "sdbox-admin": "opsadmin"}[alias]
        self.user = user
        self.home = "/root" if user == "root" else f"/home/{user}"
        box.write(f"{self.dir}/app.py", APP)
        box.write(f"{self.dir}/secret.env", f"APP_TOKEN={self.token}\n", mode="600")
        box.run(["chown", "-R", user, self.dir])

    def name(self, base: str) -> str:
        return f"{base}-{self.id}"

    def app_cmd(self, *args: str) -> str:
        return f"/usr/bin/python3 {self.dir}/app.py " + " ".join(args)

    def unit(
        self,
        name: str,
        *args: str,
        restart: str = "no",
        extra: str = "",
        user: str | None = None,
        unit_extra: str = "",
    ) -> str:
        """Install /etc/systemd/system/NAME.service running app.py ARGS; daemon-reload."""
        unit = f"{name}.service"
        text = (
            f"[Unit]\nDescription=ops test {name}\n{unit_extra}[Service]\nExecStart={self.app_cmd(*args)}\n"
            f"Restart={restart}\nRestartSec=0.3\nEnvironmentFile={self.dir}/secret.env\n"
            + (f"User={user}\n" if user else "")
            + extra
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )
        self.box.write(f"/etc/systemd/system/{unit}", text)
        self.box.run(["systemctl", "daemon-reload"])
        self.units.append(unit)
        return unit

    def user_unit(self, name: str, *args: str) -> str:
        unit = f"{name}.service"
        text = (
            f"[Unit]\nDescription=ops test {name}\n[Service]\nExecStart={self.app_cmd(*args)}\n"
            "[Install]\nWantedBy=default.target\n"
        )
        self.box.write(f"{self.home}/.config/systemd/user/{unit}", text)
        self.box.run(["chown", "-R", self.user, f"{self.home}/.config"])
        self.box.ssh(self.alias, "XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user daemon-reload")
        return unit

    def write_inventory(self, services: dict[str, dict[str, Any]], **host: Any) -> inventory.Inventory:
        tables: dict[str, dict[str, Any]] = {
            "ssh": {"config": str(self.box.ssh_config_path), "known_hosts": str(self.box.known_hosts_path)},
            "hosts.box": {
                "ssh": self.alias,
                "path": self.dir,
                "state_dir": f"{self.dir}/state",
                "services": list(services),
                **host,
            },
        }
        for name, table in services.items():
            tables[f"services.{name}"] = table
        self.inv_path.write_text(toml_tables(tables))
        return inventory.load(self.inv_path)

    def session(self) -> Any:
        inv = inventory.load(self.inv_path)
        return connect(inv, inv.host("box"))

    def inv_cmd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, OPS_INVENTORY=str(self.inv_path))
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def inv_json(self, *args: str, code: int, timeout: float = 120) -> Any:
        r = self.inv_cmd(*args, "--json", timeout=timeout)
        assert r.returncode == code, f"exit {r.returncode}, wanted {code}\n{r.stdout}\n{r.stderr}"
        assert self.token not in r.stdout + r.stderr
        return json.loads(r.stdout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.box.run(["systemctl", "show", unit, *[f"-p{p}" for p in props]]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cgroup_pids(self, unit: str) -> set[int]:
        cg = self.show(unit, "ControlGroup")["ControlGroup"]
        if not cg:
            return set()
        done = self.box.run(["sh", "-c", f"cat /sys/fs/cgroup{cg}/cgroup.procs 2>/dev/null || true"])
        return {int(x) for x in done.stdout.split()}

    def cleanup(self) -> None:
        for unit in self.units:
            self.box.run(["systemctl", "stop", unit], check=False)
            self.box.run(["systemctl", "disable", unit], check=False)
            self.box.run(["rm", "-f", f"/etc/systemd/system/{unit}"], check=False)
        self.box.run(["pkill", "-KILL", "-f", self.dir], check=False)
        self.box.run(["systemctl", "daemon-reload"], check=False)


def session_of(scene: UnitScene) -> HostSession:
    return scene.session()
