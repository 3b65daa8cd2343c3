"""The warm path, client side: reuse a host's connection and agent held by ops/holder.py.

With ``[ssh] persist = SECONDS`` in hosts.toml (like OpenSSH's ControlPersist), a task's SSH hosts
stay connected, their agents running, for that long after the task, held by one small background
process per user and version (ops/holder.py) reached over a unix socket in a private directory
(``runtime_dir()``: 0700, ours, checked; the holder checks each peer's uid with SO_PEERCRED). The
next task within the window attaches to the held agent (``attach``) and pays neither the SSH
handshake nor the agent's start; a host the holder does not hold (or holds busy, or finds dead when
it checks it before use) is connected to directly, exactly as without persist, and handed to the
holder afterwards (``hand_over``) for the next task.

What is held is keyed by everything that decides how a host is reached and how its agent runs
(``host_key``): the inventory file, the host's ssh target, interpreter and timeouts, the ssh_config
and known_hosts in effect, and the agent's version (the socket's name carries it: a client of
another version never meets this holder). Only SSH hosts are held, over either transport (the key
carries it): a ``local`` agent would inherit the holder's environment instead of the caller's.

``--no-persist`` (``OPS_NO_PERSIST=1``) leaves the holder alone; ``inv disconnect`` closes every
held connection (``disconnect_all``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.errors import TransportError
from ops.transport import _LineReader

if TYPE_CHECKING:
    from ops.inventory import Host, Inventory

PROTOCOL = 1
ATTACH_TIMEOUT = 5.0  # s for the holder's answer (it pings the held agent before saying yes)
CLIENT = {"on": True}  # the holder turns it off: it never attaches to, or hands over to, itself


def enabled(inventory: Inventory, host: Host) -> bool:
    return (
        inventory.persist > 0
        and not host.local
        and not os.environ.get("OPS_NO_PERSIST")
    )


def runtime_dir() -> Path:
    """The private directory of this user's holder sockets (created 0700; refused when it is not
    a directory of ours that only we can enter)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(base) / "ops" if base and os.path.isdir(base) else Path(f"/tmp/ops-{os.geteuid()}")
    try:
        d.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileNotFoundError:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise TransportError("persist", f"{d} is not a private directory of this user (0700, ours)",
                             "remove it, or run with --no-persist")
    return d


def socket_path() -> Path:
    from ops import agentpkg

    return runtime_dir() / f"holder-{agentpkg.bundle().version}-p{PROTOCOL}.sock"


def effective_ssh_config(inventory: Inventory) -> str | None:
    return inventory.ssh_config or os.environ.get("OPS_SSH_CONFIG")


def host_key(inventory: Inventory, host: Host) -> str:
    facts = {
        "inventory": os.path.abspath(inventory.path),
        "name": host.name,
        "ssh": host.ssh,
        "python": host.python,
        "connect_timeout": host.connect_timeout,
        "command_timeout": host.command_timeout,
        "transport": inventory.transport,
        "ssh_config": effective_ssh_config(inventory),
        "known_hosts": inventory.known_hosts,
        "home": os.path.expanduser("~"),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def _connect(path: Path, timeout: float) -> socket.socket | None:
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    return s


def _read_line(s: socket.socket, limit: int = 1 << 20) -> bytes | None:
    """One line, read byte by byte past the first chunk boundary: nothing after it is consumed
    (the holder relays the agent's lines right after its answer)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > limit:
            return None
    return buf[:-1]


def request(path: Path, message: dict[str, Any], timeout: float = ATTACH_TIMEOUT
            ) -> tuple[socket.socket, dict[str, Any]] | None:
    """Send one request line to the holder at ``path``; (socket, answer) or None if none answers."""
    s = _connect(path, timeout)
    if s is None:
        return None
    try:
        s.sendall(json.dumps(message).encode() + b"\n")
        line = _read_line(s)
        answer = json.loads(line) if line else None
    except (OSError, ValueError):
        answer = None
    if not isinstance(answer, dict):
        s.close()
        return None
    return s, answer


class HeldChannel(_LineReader):
    """The agent's stdin/stdout, relayed by the holder over the unix socket. Its first line is the
    held agent's hello, as a fresh agent's would be."""

    def __init__(self, sock: socket.socket, hello: dict[str, Any], host: str) -> None:
        super().__init__()
        self.sock = sock
        self.host = host
        self._buf = json.dumps(hello, separators=(",", ":")).encode() + b"\n"
        sock.settimeout(None)

    def _fileno(self) -> int:
        return self.sock.fileno()

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise TransportError(self.host, f"the connection dropped: {exc}") from exc

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def exit_status(self, timeout: float) -> int | None:
        return 0  # the holder keeps the agent; nothing here waits for it to end

    def stderr_text(self) -> str:
        return ""

    def close(self) -> None:
        self.shutdown_write()
        self.sock.close()


class HeldTransport:
    """A transport whose one channel is the held agent (see HeldChannel)."""

    def __init__(self, host: Host, sock: socket.socket, hello: dict[str, Any]) -> None:
        self.host = host
        self._sock: socket.socket | None = sock
        self.hello = hello
        self.held = True

    def open(self) -> None:
        return None

    def channel(self, command: str) -> HeldChannel:
        sock, self._sock = self._sock, None
        if sock is None:  # the held agent was the right version: a second start is never asked for
            raise TransportError(self.host.name, "the held agent's channel is already in use")
        return HeldChannel(sock, self.hello, self.host.name)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def describe(self) -> str:
        return f"ssh {self.host.ssh}"


def attach(inventory: Inventory, host: Host) -> HeldTransport | None:
    """The held agent of this host, when persist is on and the holder has it alive and free."""
    if not CLIENT["on"] or not enabled(inventory, host):
        return None
    from ops import agentpkg

    try:
        path = socket_path()
    except TransportError:
        return None
    got = request(path, {"op": "attach", "key": host_key(inventory, host),
                         "version": agentpkg.bundle().version})
    if got is None:
        return None
    sock, answer = got
    hello = answer.get("hello")
    version = agentpkg.bundle().version
    if not answer.get("ok") or not isinstance(hello, dict) or hello.get("version") != version:
        sock.close()
        return None
    return HeldTransport(host, sock, hello)


def hand_over(inventory: Inventory, host: Host) -> None:
    """After a direct (cold) session: ask the holder to connect this host for the next task,
    starting the holder when none runs. The holder makes its own connection, in the background."""
    if not CLIENT["on"] or not enabled(inventory, host):
        return
    try:
        path = socket_path()
    except TransportError:
        return
    warm = {
        "op": "warm",
        "inventory": os.path.abspath(inventory.path),
        "ssh_config": effective_ssh_config(inventory),
        "hosts": [host.name],
        "persist": inventory.persist,
    }
    got = request(path, warm)
    if got is not None:
        got[0].close()
        return
    _spawn(path, warm)


def _spawn(path: Path, warm: dict[str, Any]) -> None:
    """Start a holder in its own session (it outlives this process); it reads ``warm`` on stdin."""
    import ops

    env = dict(os.environ)
    root = str(Path(ops.__file__).resolve().parent.parent)  # this very code, not another install
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("OPS_NO_FAST_EXIT", None)
    log = path.with_suffix(".log")
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as err:
            p = subprocess.Popen(
                [sys.executable, "-m", "ops.holder", str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd="/",
                start_new_session=True, close_fds=True,
            )
        assert p.stdin is not None
        p.stdin.write(json.dumps(warm).encode() + b"\n")
        p.stdin.close()
    except OSError:
        pass  # no holder: the next task connects directly, as without persist


def disconnect_all(timeout: float = 10.0) -> list[dict[str, Any]]:
    """Ask every holder of this user (any version) to close what it holds and exit."""
    try:
        d = runtime_dir()
    except TransportError:
        return []
    out = []
    for path in sorted(d.glob("holder-*.sock")):
        got = request(path, {"op": "disconnect"}, timeout=timeout)
        if got is None:
            try:
                path.unlink()  # nobody answers: a stale socket
            except OSError:
                pass
            continue
        got[0].close()
        out.append({"socket": str(path), **got[1]})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.exists() for p in d.glob("holder-*.sock")):
        time.sleep(0.02)
    return out
