"""The benchmark's test bed: a temp dir, a private loopback sshd (tests.harness), scratch repos,
inventories, timed subprocesses, and a cleanup that leaves no process behind (even on Ctrl-C).

Every process the bench starts lives under one fresh temp dir (its cwd or its argv names it), so
the last line of defence, ``sweep()``, can find exactly those by pid and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import harness  # noqa: E402

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}

# The demo as test_deploy.py declares it (tests/harness.py), with 15 s ready timeouts.
DEMO_SERVICES = harness.deployed_demo_services(ready_timeout=15)


class BenchError(Exception):
    """A benchmarked command failed: the numbers would be meaningless, so the case stops."""


@dataclass
class HostSpec:
    name: str
    ssh: str  # an alias of the rig's ssh_config ('' for a local host)
    path: Path
    state_dir: Path
    services: list[str]
    overrides: dict[str, int] = field(default_factory=dict)  # service -> port
    python: str | None = None  # the host's interpreter for the agent (default: python3)


def inventory_text(ssh_config: Path | None, hosts: list[HostSpec], services: str) -> str:
    """hosts.toml for the given hosts and service declarations (pure)."""
    out = [f'[ssh]\nconfig = "{ssh_config}"\n'] if ssh_config else []
    for h in hosts:
        via = f'ssh = "{h.ssh}"' if h.ssh else "local = true"
        lines = [
            f"[hosts.{h.name}]",
            via,
            f'path = "{h.path}"',
            f'state_dir = "{h.state_dir}"',
            "connect_timeout = 5",
            "services = [" + ", ".join(f'"{s}"' for s in h.services) + "]",
        ]
        lines += [f'python = "{h.python}"'] if h.python else []
        lines += [f"overrides.{svc}.port = {port}" for svc, port in h.overrides.items()]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out) + services


def git(repo: Path, *args: str) -> str:
    p = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        timeout=60,
    )
    if p.returncode != 0:
        raise BenchError(f"git {' '.join(args)} in {repo}: {p.stderr.strip()}")
    return p.stdout.strip()


def inv_binary() -> str:
    """The `inv` script of this interpreter (not a pyenv shim: a shim adds ~50 ms of bash)."""
    here = Path(sys.executable).parent / "inv"
    return str(here) if here.exists() else (shutil.which("inv") or "inv")


class Rig:
    def __init__(self, keep: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ops-bench-"))
        self.keep = keep
        self._sshd: harness.SshServer | None = None
        self._plain: harness.SshServer | None = None
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    # --- resources ------------------------------------------------------------------------

    @property
    def sshd(self) -> harness.SshServer:
        """The loopback sshd (tests/harness.py): the remote shell is this user's, ~/.bashrc and all."""
        if self._sshd is None:
            problem = harness.sshd_available()
            if problem:
                raise BenchError(problem)
            self._sshd = harness.start_sshd(self.tmp / "sshd")
        return self._sshd

    @property
    def plain_sshd(self) -> harness.SshServer:
        """A second loopback sshd whose sessions skip ~/.bashrc: it sets SHLVL=1, and bash sources
        ~/.bashrc for ssh commands only when SHLVL < 2. For the fan-out case, where 30 sessions'
        worth of a heavy rc file (pyenv init: ~0.1 s of CPU each) would measure this machine's two
        cores, not the tool."""
        if self._plain is None:
            if harness.sshd_available():
                raise BenchError(harness.sshd_available() or "")
            server = harness.SshServer(self.tmp / "sshd-plain")
            server._write_files()  # what harness.start_sshd does, plus one line of config
            server.sshd_config_path.write_text(server.sshd_config_path.read_text() + "SetEnv SHLVL=1\n")
            try:
                self._plain = server.start()
            except BaseException:
                server.close()
                raise
        return self._plain

    def on_cleanup(self, label: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((label, fn))

    def dir(self, *parts: str) -> Path:
        d = self.tmp.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def make_repo(self, name: str, with_demo: bool = True) -> Path:
        """A scratch project (the demo services, one commit), like test_deploy's fixture."""
        r = self.tmp / name
        if with_demo:
            shutil.copytree(
                REPO_ROOT / "examples" / "demo",
                r / "examples" / "demo",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        shutil.copytree(
            BENCH_DIR / "services", r / "bench_services", ignore=shutil.ignore_patterns("__pycache__")
        )
        git(r, "init", "-q", "-b", "main")
        git(r, "add", "-A")
        git(r, "commit", "-q", "-m", "first")
        return r

    def new_commit(self, repo: Path, n: int) -> str:
        """A new commit that changes a file (so every deploy ships something)."""
        (repo / "ROUND").write_text(f"{n}\n")
        git(repo, "add", "ROUND")
        git(repo, "commit", "-q", "-m", f"round {n}")
        return git(repo, "rev-parse", "HEAD")

    def write_inventory(
        self, name: str, hosts: list[HostSpec], services: str, ssh: bool = True, plain: bool = False
    ) -> Path:
        path = self.tmp / f"{name}.toml"
        server = self.plain_sshd if plain else self.sshd
        path.write_text(inventory_text(server.ssh_config_path if ssh else None, hosts, services))
        self.on_cleanup(f"stop services of {name}", lambda: stop_all(path))
        return path

    def ops_env(self, inventory: Path) -> dict[str, str]:
        env = {**os.environ, "OPS_INVENTORY": str(inventory), "OPS_JOURNAL": str(self.tmp / "journal.jsonl")}
        # as a person runs it: Python caches the project's bytecode (an environment that sets
        # PYTHONDONTWRITEBYTECODE would have `inv` compile every ops module on every run, ~80 ms)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.tmp / "pycache")
        return env

    # --- running --------------------------------------------------------------------------

    def timed(
        self,
        argv: list[str],
        *,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        input_bytes: bytes | None = None,
        check: bool = True,
    ) -> tuple[float, subprocess.CompletedProcess[bytes]]:
        """Run argv, return (wall seconds, result). A failure raises BenchError with its output."""
        t = time.perf_counter()
        p = subprocess.run(argv, cwd=cwd, env=env, input=input_bytes, capture_output=True, timeout=timeout)
        took = time.perf_counter() - t
        if check and p.returncode != 0:
            out = (p.stdout + p.stderr).decode("utf-8", "replace")[-3000:]
            raise BenchError(f"{' '.join(argv[:4])}... exited {p.returncode}:\n{out}")
        return took, p

    def inv(self, inventory: Path, *args: str, cwd: Path | None = None, timeout: float = 120) -> float:
        """`inv ARGS` as a person types it in their project (cwd), timed."""
        argv = [inv_binary(), "--search-root", str(REPO_ROOT), *args]
        took, _ = self.timed(argv, cwd=cwd or REPO_ROOT, env=self.ops_env(inventory), timeout=timeout)
        return took

    # --- cleanup --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every service, then sshd, then kill whatever is left under the temp dir."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            for label, fn in reversed(self._cleanups):
                try:
                    fn()
                except Exception as exc:  # keep cleaning
                    print(f"bench: cleanup '{label}' failed: {exc}", file=sys.stderr)
            self._cleanups.clear()
            for server in (self._sshd, self._plain):
                if server is not None:
                    server.close()
            self._sshd = self._plain = None
            left = sweep(self.tmp)
            if left:
                print(f"bench: killed {len(left)} leftover process(es): {left}", file=sys.stderr)
            if not self.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_all(inventory: Path) -> None:
    """Stop every service of every host of an inventory through the library (best effort)."""
    from ops import control
    from ops import inventory as inv_mod
    from ops.session import on_hosts

    inv = inv_mod.load(inventory)
    on_hosts(inv, list(inv.hosts.values()), control.stop)


def _ours(pid: int, root: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
    return cwd.startswith(root) or root in " ".join(harness.cmdline(pid))


def sweep(root: Path, timeout: float = 5.0) -> list[int]:
    """Kill (by pid) every process whose cwd or argv is under ``root`` — only the bench's own."""
    me = {os.getpid(), os.getppid()}
    r = str(root)
    found = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in me]
    pids = [p for p in found if _ours(p, r)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            harness.kill_quietly(p, sig)
        with contextlib.suppress(TimeoutError):
            harness.wait_until(lambda: not any(harness.pid_alive(p) for p in pids), timeout / 2)
    return pids


def cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores; /proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """What the numbers were measured on."""

    def out(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    from importlib.metadata import version

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus (nproc)": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "os": out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "openssh": out(["ssh", "-V"]),
        "git": out(["git", "--version"]),
    }
    for pkg in ("invoke", "fabric", "paramiko"):
        try:
            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = "?"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"
