"""Shared pieces of the deploy end-to-end tests: a scratch repository holding the demo, an
inventory of hosts over the real sshd, `inv` run as a user runs it, and small tmpfs mounts for
full-disk tests (mounted by the test itself, as root, and always unmounted)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import control, inventory
from ops.session import connect
from tests.harness import deployed_demo_services, free_port, git

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = deployed_demo_services()


def make_repo(tmp_path: Path) -> Path:
    """A scratch project holding the demo services, with one commit."""
    r = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "examples" / "demo", r / "examples" / "demo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    return r


def commit_file(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def break_daemon(repo: Path, message: str = "broken") -> str:
    (repo / "examples/demo/daemon.py").write_text(
        "import sys\nprint('boom: broken on purpose', flush=True)\nsys.exit(7)\n")
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD")


def write_inventory(tmp_path: Path, sshd, hosts: dict[str, str], extra: str = "",
                    state_dir: Path | None = None, checkout: Path | None = None,
                    services_extra: str = "") -> Path:
    """hosts: name -> ssh alias ('' for local). Each host gets its own checkout, state and port."""
    lines = [f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n'] if sshd else []
    for name, alias in hosts.items():
        via = f'ssh = "{alias}"' if alias else "local = true"
        co = checkout or tmp_path / "hosts" / name / "checkout"
        st = state_dir or tmp_path / "hosts" / name / "state"
        lines.append(
            f"[hosts.{name}]\n{via}\npath = \"{co}\"\n"
            f"state_dir = \"{st}\"\nconnect_timeout = 3\n"
            f"services = [\"demo_daemon\", \"demo_worker\"]\n"
            f"overrides.demo_api.port = {free_port()}\n{extra}\n"
        )
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + SERVICES + services_extra)
    return path


def inv_env(inv_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OPS_INVENTORY=str(inv_path), OPS_JOURNAL=str(inv_path.parent / "journal.jsonl"))
    env.update(extra)
    return env


def run_inv(inv_path: Path, repo: Path, *args: str, timeout: float = 180,
            **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
                          cwd=repo, env=inv_env(inv_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def spawn_inv(inv_path: Path, repo: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """`inv ARGS` in the background, stdout line-buffered through a pipe (read it with readline)."""
    return subprocess.Popen([sys.executable, "-u", "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
                            cwd=repo, env=inv_env(inv_path, PYTHONUNBUFFERED="1", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def health_commit(inv: inventory.Inventory, host: str) -> str | None:
    """The commit the demo API of the host serves (None when it does not answer)."""
    port = inv.hosts[host].service("demo_api").port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
            return json.loads(resp.read())["commit"]
    except OSError:
        return None


def states(inv_path: Path, host: str = "box") -> dict[str, str]:
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts[host]) as s:
        return {x["name"]: x["state"] for x in control.status(s, health=False)}


def stop_everything(paths: list[Path]) -> None:
    for path in paths:
        try:
            inv = inventory.load(path)
        except Exception:
            continue
        for h in inv.hosts.values():
            try:
                with connect(inv, h) as s:
                    control.stop(s)
            except Exception:
                pass


@contextlib.contextmanager
def small_tmpfs(where: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of size_kb mounted at `where` (root only: skipped otherwise); always unmounted."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("full-disk tests need root to mount a tmpfs", pytrace=False)
        pytest.skip("full-disk tests need root to mount a tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path) -> Path:
    """Fill a filesystem to the last byte with one file; returns it (delete it to free the space)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


class Output:
    """Collects a background process's stdout lines as they come (a reader thread), so a test can
    wait for a line instead of sleeping."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        from tests.harness import wait_until

        wait_until(lambda: needle in self.text() or self.proc.poll() is not None, timeout=timeout,
                   message=f"{needle!r} in the output")
        assert needle in self.text(), self.text()

    def finish(self, timeout: float) -> str:
        self.proc.wait(timeout)
        self._thread.join(10)
        return self.text()
