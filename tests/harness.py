"""Test harness: a real throwaway OpenSSH server, waiting helpers and process helpers.

Nothing here sleeps for a fixed time: every wait polls a condition and has a timeout.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------- waiting


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = LOCALHOST, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises TimeoutError (with ``message`` and the last falsy value) after ``timeout`` seconds.
    The predicate is always evaluated at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for: {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_for_port(port: int, host: str = LOCALHOST, timeout: float = 10.0) -> None:
    """Wait until host:port accepts TCP connections (polls every 20 ms)."""
    try:
        wait_until(lambda: port_open(port, host, timeout=0.2), timeout, interval=0.02)
    except TimeoutError:
        raise TimeoutError(
            f"nothing accepted TCP connections on {host}:{port} within {timeout:.1f}s"
        ) from None


def wait_for_port_closed(port: int, host: str = LOCALHOST, timeout: float = 10.0) -> None:
    """Wait until host:port refuses TCP connections."""
    try:
        wait_until(lambda: not port_open(port, host, timeout=0.2), timeout, interval=0.02)
    except TimeoutError:
        raise TimeoutError(
            f"{host}:{port} still accepts TCP connections after {timeout:.1f}s"
        ) from None


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text, or "" if it does not exist (yet). Undecodable bytes are replaced."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_text(
    path: str | os.PathLike[str], needle: str, timeout: float = 10.0, count: int = 1
) -> str:
    """Wait until the file contains ``needle`` at least ``count`` times; return the whole text."""

    def found() -> str | None:
        text = read_text(path)
        return text if text.count(needle) >= count else None

    try:
        return wait_until(found, timeout)
    except TimeoutError:
        tail = read_text(path)[-2000:]
        raise TimeoutError(
            f"{needle!r} (x{count}) did not appear in {path} within {timeout:.1f}s; "
            f"file ends with:\n{tail}"
        ) from None


def holds_for(predicate: Callable[[], Any], duration: float, interval: float = 0.02) -> bool:
    """True if ``predicate`` stays truthy for the whole ``duration`` (for negative checks:
    "the process is still alive", "the file did not change"). Returns False as soon as it fails.
    """
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    return fields[0] not in ("Z", "X")


def process_ids(pid: int) -> dict[str, int] | None:
    """{"ppid", "pgid", "sid"} of a live process, or None."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return {"ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3])}


def cmdline(pid: int) -> list[str]:
    """argv of a process ([] if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


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


def child_pids(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid``: from /proc/<pid>/task/*/children when the
    kernel provides it, else by scanning the ppid of every /proc/*/stat."""
    task_dir = Path(f"/proc/{pid}/task")
    found: set[int] = set()
    have_children_files = False
    try:
        for task in task_dir.iterdir():
            try:
                text = (task / "children").read_text()
            except FileNotFoundError:
                continue
            have_children_files = True
            found.update(int(part) for part in text.split())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return []
    if not have_children_files:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat_fields(int(entry))
                if fields and int(fields[1]) == pid:
                    found.add(int(entry))
    return sorted(child for child in found if pid_alive(child))


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def killpg_quietly(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_until_none_left(
    find: Callable[[], Collection[int]], timeout: float = 10.0, message: str = ""
) -> None:
    """SIGKILL every pid ``find()`` returns, again and again until it returns none (a supervisor or
    a spawn loop may start a new process between one look and the kill). TimeoutError if some stay."""

    def none_left() -> bool:
        pids = find()
        for pid in pids:
            kill_quietly(pid)
        return not pids

    wait_until(none_left, timeout, message=message or "every process found to die")


class ProcessTracker:
    """Starts processes in their own session and guarantees they die at ``cleanup()``.

    Every process gets stdout+stderr redirected to a log file (never a pipe: a full pipe blocks
    the child). ``adopt(pid)`` registers extra pids (e.g. grandchildren that escaped the group).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_pids: list[int] = []
        self._n = 0

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self._n += 1
        log_path = Path(log) if log else self.log_dir / f"proc{self._n}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc, log_path

    def adopt(self, pid: int) -> None:
        self.extra_pids.append(pid)

    def cleanup(self, timeout: float = 5.0) -> None:
        for proc in self.procs:
            killpg_quietly(proc.pid)  # pgid == pid thanks to start_new_session
        for pid in self.extra_pids:
            kill_quietly(pid)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        for pid in self.extra_pids:
            with contextlib.suppress(TimeoutError):
                wait_until(lambda pid=pid: not pid_alive(pid), timeout)


# --------------------------------------------------------------------------- sshd


def _keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        if p.exists():
            p.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _root_account_locked(user: str) -> bool:
    """Without PAM, sshd refuses every login (even by key) to an account whose shadow password
    starts with "!" (e.g. after `passwd -l`)."""
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split(":")
        if parts[0] == user and len(parts) > 1:
            return parts[1].startswith("!")
    return False


class SshServer:
    """A private sshd on 127.0.0.1 that accepts only a throwaway key for the current user.

    The client side is described by ``ssh_config_path`` with three host entries:
    ``opstest`` (this server), ``opstest-*`` (any name, same server: many inventory hosts sharing
    one sshd) and ``opsdead`` (a port where nothing listens: connections are refused at once).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOCALHOST
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key_path = self.workdir / "ssh_host_ed25519_key"
        self.key_path = self.workdir / "id_ed25519"
        self.authorized_keys_path = self.workdir / "authorized_keys"
        self.sshd_config_path = self.workdir / "sshd_config"
        self.ssh_config_path = self.workdir / "ssh_config"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.pid_path = self.workdir / "sshd.pid"
        self.log_path = self.workdir / "sshd.log"
        # Keep a socket bound (but not listening) on the dead port for the server's lifetime:
        # connections to it are refused, and the kernel cannot hand the port to anyone else.
        self._dead_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._dead_sock.bind((LOCALHOST, 0))
        self.dead_port: int = self._dead_sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- setup

    def _write_files(self) -> None:
        _keygen(self.host_key_path, "opstest-host")
        _keygen(self.key_path, "opstest-client")
        pub = self.key_path.with_name(self.key_path.name + ".pub").read_text()
        self.authorized_keys_path.write_text(pub)
        self.authorized_keys_path.chmod(0o600)
        self.known_hosts_path.write_text("")
        self.sshd_config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key_path}",
                    f"PidFile {self.pid_path}",
                    # the user's own file too: a second test user (two-user tests) is let in by
                    # its ~/.ssh/authorized_keys (sshd reads it as that user; the tmp dir is private)
                    f"AuthorizedKeysFile {self.authorized_keys_path} .ssh/authorized_keys",
                    "StrictModes no",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "MaxSessions 100",
                    "MaxStartups 200",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        common = [
            f"    User {self.user}",
            f"    IdentityFile {self.key_path}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.known_hosts_path}",
            "    StrictHostKeyChecking accept-new",
        ]
        live = [f"    HostName {self.host}", f"    Port {self.port}", *common]
        dead = [f"    HostName {self.host}", f"    Port {self.dead_port}", *common]
        self.ssh_config_path.write_text(
            "\n".join(
                ["Host opstest", *live, "", "Host opstest-*", *live, "", "Host opsdead", *dead, ""]
            )
        )

    def start(self, timeout: float = 10.0) -> SshServer:
        """Start sshd (files must exist) and wait until its port accepts connections."""
        if os.geteuid() == 0:
            # Privilege separation directory: sshd refuses to start as root without it.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.sshd_config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with code {proc.returncode} at start; log {self.log_path}:\n"
                    + read_text(self.log_path)[-2000:]
                )
            return port_open(self.port, self.host)

        try:
            wait_until(up, timeout, message=f"sshd listening on {self.host}:{self.port}")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}; log:\n{read_text(self.log_path)[-2000:]}") from None
        return self

    # ---- control

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate sshd (TERM, wait, KILL). Established sessions run in their own sessions
        and end when their clients disconnect."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def close(self) -> None:
        """stop() and release the dead port."""
        self.stop()
        self._dead_sock.close()

    def rotate_host_key(self) -> None:
        """Restart sshd on the same port with a brand-new host key. Clients that already trust
        the old key (known_hosts) must now refuse to connect."""
        self.stop()
        wait_for_port_closed(self.port, self.host)
        _keygen(self.host_key_path, "opstest-host-rotated")
        self.start()

    def reset_known_hosts(self) -> None:
        """Forget every trusted host key (the next connection re-learns it: accept-new)."""
        self.known_hosts_path.write_text("")

    @property
    def host_public_key(self) -> str:
        """The server's current public host key line ("ssh-ed25519 AAAA... comment")."""
        return self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().strip()

    def ssh_argv(self, *remote_cmd: str, host: str = "opstest") -> list[str]:
        """argv for the system ssh client: ssh -F <ssh_config> -o BatchMode=yes opstest CMD..."""
        return [
            "ssh",
            "-F",
            str(self.ssh_config_path),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            host,
            *remote_cmd,
        ]

    def __repr__(self) -> str:
        return f"SshServer({self.user}@{self.host}:{self.port}, workdir={self.workdir})"


def sshd_available() -> str | None:
    """None if sshd and ssh-keygen exist, else a sentence saying what is missing."""
    missing = [
        name
        for name, ok in (
            (SSHD, os.access(SSHD, os.X_OK)),
            ("ssh-keygen", shutil.which("ssh-keygen")),
        )
        if not ok
    ]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install openssh-server "
            "(apt-get install openssh-server) to run the ssh integration tests"
        )
    return None


def start_sshd(workdir: Path) -> SshServer:
    """Create keys and configs in ``workdir`` and start a private sshd. Call ``.close()``."""
    user = getpass.getuser()
    if os.geteuid() == 0 and _root_account_locked(user):
        raise RuntimeError(
            f"the account {user!r} is locked ('!' in /etc/shadow): sshd without PAM refuses "
            f"every login to it, even by key. Unlock it without a password: usermod -p '*' {user}"
        )
    server = SshServer(workdir)
    server._write_files()
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


# --------------------------------------------------------------------------- git and deployed demo


def git(repo: Path, *args: str) -> str:
    """`git -C repo ARGS` with a fixed test identity; its stdout, stripped (raises if git fails)."""
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    p = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)
    return p.stdout.strip()


# The [services.*] tables of the demo in a deployed checkout (paths relative to the host's `path`).
_DEPLOYED_DEMO_SERVICES = r"""
[services.demo_daemon]
cmd = "python3 examples/demo/daemon.py auto --api-port ${port:demo_api} --api-log ${state_dir}/logs/api.log"
log = "${state_dir}/logs/daemon.log"
env_file = "examples/demo/secrets/demo.env"
children = ["demo_api"]
ready.log = "auto-answering"
ready.timeout = READY_TIMEOUT
stop_timeout = 3

[services.demo_api]
match = "examples/demo/api\\.py --port ${port}"
port = 1
log = "${state_dir}/logs/api.log"
health = { url = "http://127.0.0.1:${port}/health", body = "ok" }

[services.demo_worker]
cmd = "python3 examples/demo/worker.py --heartbeat ${state_dir}/hb.json"
after = ["demo_daemon"]
ready.log = "worker ready"
ready.timeout = READY_TIMEOUT
stop_timeout = 3
"""


def deployed_demo_services(ready_timeout: int = 10) -> str:
    """The demo as a deployed checkout declares it (a daemon supervising an API child, and a
    worker), for test_deploy and bench/: TOML to append to the [hosts.*] tables."""
    return _DEPLOYED_DEMO_SERVICES.replace("READY_TIMEOUT", str(ready_timeout))


__all__ = [
    "LOCALHOST",
    "SSHD",
    "ProcessTracker",
    "SshServer",
    "child_pids",
    "cmdline",
    "deployed_demo_services",
    "free_port",
    "git",
    "holds_for",
    "kill_quietly",
    "kill_until_none_left",
    "killpg_quietly",
    "pid_alive",
    "port_open",
    "process_ids",
    "processes_with",
    "read_text",
    "sshd_available",
    "start_sshd",
    "wait_for_port",
    "wait_for_port_closed",
    "wait_for_text",
    "wait_until",
]
