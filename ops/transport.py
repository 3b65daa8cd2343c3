"""How commands reach a host: over SSH (fabric.Connection) or locally, behind one interface.

A transport opens *channels*: one command with stdin/stdout pipes, read line by line with a
deadline. The agent runs in one such channel for a whole task, so the per-command cost of
fabric's runner (I/O threads polling every 10 ms) is paid never, and the SSH cost once.

SSH specifics: ~/.ssh/config is honoured (HostName, User, Port, IdentityFile, ProxyJump) through
fabric; the host-key policy is OpenSSH's ``accept-new`` (unknown key: accept and record; changed
key: refuse); TCP_NODELAY is set (paramiko does not, and Nagle costs ~40 ms per exchange).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import select
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ops.errors import CommandTimeout, HostKeyChanged, TransportError, Unreachable

if TYPE_CHECKING:
    from ops.inventory import Host, Inventory


class Channel(Protocol):
    def send(self, data: bytes) -> None: ...
    def shutdown_write(self) -> None: ...
    def read_line(self, deadline: float | None) -> bytes | None: ...
    def exit_status(self, timeout: float) -> int | None: ...
    def stderr_text(self) -> str: ...
    def close(self) -> None: ...


class _LineReader:
    """Line buffering over a readable fd-like source with select() and deadlines."""

    host = "?"

    def __init__(self) -> None:
        self._buf = b""
        self._eof = False

    def _fileno(self) -> int:
        raise NotImplementedError

    def _recv(self) -> bytes:
        raise NotImplementedError

    def read_line(self, deadline: float | None) -> bytes | None:
        while b"\n" not in self._buf:
            if self._eof:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise CommandTimeout(self.host, "no answer before the deadline")
            r, _, _ = select.select([self._fileno()], [], [], remaining)
            if not r:
                continue
            chunk = self._recv()
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        line, _, self._buf = self._buf.partition(b"\n")
        return line


class LocalChannel(_LineReader):
    def __init__(self, command: str, host: str) -> None:
        super().__init__()
        self.host = host
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        # A new session: Ctrl-C in the terminal does not reach the agent, exactly as over SSH.
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )

    def _fileno(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def _recv(self) -> bytes:
        return os.read(self._fileno(), 65536)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise TransportError(self.host, "the agent went away") from exc

    def shutdown_write(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def exit_status(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_text(self) -> str:
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")

    def close(self) -> None:
        self.shutdown_write()
        if self.proc.poll() is None and self.exit_status(5.0) is None:
            self.proc.kill()
            self.proc.wait(5.0)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


class SSHChannel(_LineReader):
    def __init__(self, chan, host: str) -> None:  # chan: paramiko.Channel
        super().__init__()
        self.chan = chan
        self.host = host

    def _fileno(self) -> int:
        return self.chan.fileno()

    def _recv(self) -> bytes:
        if self.chan.recv_ready():
            return self.chan.recv(65536)
        if self.chan.eof_received or self.chan.closed:
            return b""
        return self.chan.recv(65536)

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except OSError as exc:
            raise TransportError(self.host, f"the connection dropped: {exc}") from exc

    def shutdown_write(self) -> None:
        try:
            self.chan.shutdown_write()
        except OSError:
            pass

    def exit_status(self, timeout: float) -> int | None:
        if self.chan.status_event.wait(timeout):
            return self.chan.recv_exit_status()
        return None

    def stderr_text(self) -> str:
        out = b""
        while self.chan.recv_stderr_ready():
            out += self.chan.recv_stderr(65536)
        return out.decode("utf-8", "replace")

    def close(self) -> None:
        self.shutdown_write()
        self.chan.close()


class LocalTransport:
    """The built-in `local` host: the same agent and protocol, run as a local subprocess."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def open(self) -> None:
        return None

    def channel(self, command: str) -> Channel:
        return LocalChannel(command, self.host.name)

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return "local"


_known_hosts_lock = threading.Lock()

# paramiko's transport thread logs handshake failures (with a traceback) at ERROR; with no handler
# configured Python prints them on stderr. The failure reaches the user as an Unreachable instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _accept_new_policy(path: str):
    import paramiko

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        """OpenSSH's StrictHostKeyChecking=accept-new: record the key of a host never seen before.
        paramiko itself refuses a host whose key differs from a known one, of the same type or
        not (BadHostKeyException), and only calls this for hosts with no known key at all."""

        def missing_host_key(self, client, hostname, key):  # noqa: ANN001
            with _known_hosts_lock:
                client.get_host_keys().add(hostname, key.get_name(), key)
                with open(path, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return AcceptNew()


class SSHTransport:
    """One fabric Connection per host, reused for every channel of a task."""

    def __init__(self, host: Host, inventory: Inventory) -> None:
        self.host = host
        self.inventory = inventory
        self.conn = None

    def _config(self):
        from fabric import Config

        ssh_config = self.inventory.ssh_config or os.environ.get("OPS_SSH_CONFIG")
        if ssh_config:
            return Config(runtime_ssh_path=ssh_config)
        return Config()

    def known_hosts_path(self, conn) -> str:
        path = self.inventory.known_hosts or conn.ssh_config.get("userknownhostsfile")
        if isinstance(path, list):
            path = path[0]
        path = path.split()[0] if path else "~/.ssh/known_hosts"
        return os.path.expanduser(path)

    def open(self) -> None:
        from fabric import Connection

        assert self.host.ssh is not None
        timeout = max(1, math.ceil(self.host.connect_timeout))
        try:
            conn = Connection(
                self.host.ssh,
                config=self._config(),
                connect_timeout=timeout,
                connect_kwargs={"banner_timeout": timeout, "auth_timeout": timeout},
            )
        except Exception as exc:  # bad ssh_config, bad port syntax...
            raise TransportError(
                self.host.name,
                f"cannot set up SSH to {self.host.ssh!r}: {exc}",
                "check the ssh value in hosts.toml and your ~/.ssh/config",
            ) from exc
        kh = self._trust(conn)
        # ProxyJump hops are Connections fabric made from the ssh_config: give them the same
        # host-key policy and timeouts (fabric's defaults: accept any key, wait forever).
        hop = conn.gateway
        while isinstance(hop, Connection):
            hop.connect_timeout = timeout
            hop.connect_kwargs.update(banner_timeout=timeout, auth_timeout=timeout)
            self._trust(hop)
            hop = hop.gateway
        target = f"{conn.user}@{conn.host}:{conn.port}"
        if isinstance(conn.gateway, Connection):
            target += f" (via ProxyJump {conn.gateway.user}@{conn.gateway.host}:{conn.gateway.port})"
        try:
            conn.open()
        except Exception as exc:
            _close_hops(conn)  # a ProxyJump hop may be open even when the last hop failed
            raise self._connect_error(exc, kh, target, timeout) from None
        hop = conn
        while hop is not None and hop.transport is not None:  # the first hop owns the TCP socket
            sock = getattr(hop.transport, "sock", None)
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hop.transport.set_keepalive(15)
            hop = hop.gateway if isinstance(hop.gateway, Connection) else None
        self.conn = conn

    def _connect_error(self, exc: Exception, kh: str, target: str, timeout: int) -> Exception:
        """paramiko's and the socket's exceptions -> the OpsError a person can act on."""
        import paramiko

        if isinstance(exc, paramiko.BadHostKeyException):
            return HostKeyChanged(
                self.host.name,
                f"host key for {exc.hostname} has CHANGED (got {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known_hosts {kh} has another); "
                f"refusing to connect to {target}",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return Unreachable(
                self.host.name,
                f"authentication to {target} failed: {exc}",
                "check IdentityFile/User for this host in ~/.ssh/config",
            )
        text = str(exc)
        if isinstance(exc, paramiko.SSHException) and ("banner" in text or text == "No existing session"):
            # paramiko's handshake timeout surfaces as one of these (whichever timer fires first)
            return Unreachable(
                self.host.name,
                f"{target} accepted the TCP connection but did not complete the SSH handshake "
                f"within {timeout}s",
                "is an SSH server answering on that port? check HostName/Port in your ssh_config",
            )
        if isinstance(exc, TimeoutError):
            return Unreachable(self.host.name, f"connect to {target} timed out after {timeout}s")
        if isinstance(exc, OSError | paramiko.SSHException | EOFError):
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return Unreachable(self.host.name, f"cannot connect to {target}: {reason}")
        return exc

    def _trust(self, conn) -> str:
        """Load the connection's known_hosts and apply accept-new to it; return the file."""
        kh = self.known_hosts_path(conn)
        Path(kh).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(kh).touch(mode=0o600, exist_ok=True)
        conn.client.load_host_keys(kh)
        conn.client.set_missing_host_key_policy(_accept_new_policy(kh))
        return kh

    def channel(self, command: str) -> Channel:
        import paramiko

        if self.conn is None:
            self.open()
        assert self.conn is not None
        try:
            chan = self.conn.transport.open_session(timeout=self.host.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(self.host.name, f"cannot open a session: {exc}") from None
        return SSHChannel(chan, self.host.name)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            _close_hops(conn)

    def describe(self) -> str:
        return f"ssh {self.host.ssh}"


def fingerprint(key) -> str:
    """A host key's fingerprint as OpenSSH prints it (ssh-keygen -lf): SHA256:base64."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _close_hops(conn) -> None:
    """Close a Connection and its ProxyJump hops (fabric closes only the last one)."""
    from fabric import Connection

    hop = conn
    while isinstance(hop, Connection):
        hop.close()
        hop = hop.gateway


def for_host(host: Host, inventory: Inventory) -> LocalTransport | SSHTransport:
    if not host.local and getattr(inventory, "transport", "paramiko") == "openssh":
        from ops.openssh import OpenSSHTransport  # [ssh] transport = "openssh" (issue 18)

        return OpenSSHTransport(host, inventory)  # type: ignore[return-value]
    return LocalTransport(host) if host.local else SSHTransport(host, inventory)
