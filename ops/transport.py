"""How commands reach a host: over SSH (fabric.Connection) or locally, behind one interface.

A transport opens *channels*: one command with stdin/stdout pipes, read line by line with a
deadline. The agent runs in one such channel for a whole task, so the per-command cost of
fabric's runner (I/O threads polling every 10 ms) is paid never, and the SSH cost once.

SSH specifics: ~/.ssh/config is honoured (HostName, User, Port, IdentityFile, ProxyJump) through
fabric; the host-key policy is the ssh_config's StrictHostKeyChecking, as OpenSSH applies it, with
``accept-new`` when it is not set (unknown key: accept and record; changed key: refuse); ``yes``
(and ``ask``, which cannot ask here) refuses an unknown key, ``no`` accepts even a changed one.
Keys are read from every UserKnownHostsFile and recorded in the first. TCP_NODELAY is set (paramiko
does not, and Nagle costs ~40 ms per exchange).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import select
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ops.errors import CommandTimeout, HostKeyChanged, HostKeyUnknown, TransportError, Unreachable

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

    def link_error(self) -> str | None:
        return None

    def describe(self) -> str:
        return "local"


_known_hosts_lock = threading.Lock()


class QuickAckSocket:
    """paramiko's TCP socket, acknowledging at once whatever it has just received.

    sshd leaves Nagle's algorithm on for a session without a terminal, so a small message it
    sends while an earlier one is unacknowledged waits for our ACK, and Linux delays that ACK by
    up to 40 ms when we have nothing to send. It happened on every connection: right after
    authentication sshd sends two small messages of its own (a hostkeys-00 notice, a debug
    line), and the confirmation of our first channel then waited ~43 ms for their ACK. The same
    happens to an agent reply that follows a progress event. Setting TCP_QUICKACK after each
    receive sends a pending ACK now (Linux only; elsewhere the socket is used as it is).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return data

    def __getattr__(self, name: str):  # send, close, settimeout, fileno...: the socket's own
        return getattr(self._sock, name)


def quick_acks(transport: object, sock: socket.socket) -> bool:
    """Make the reads of paramiko's transport (its Packetizer) go through QuickAckSocket; False
    where that is not possible (not Linux, or a paramiko whose Packetizer holds it otherwise)."""
    if not hasattr(socket, "TCP_QUICKACK"):
        return False
    packetizer = getattr(transport, "packetizer", None)
    attr = "_Packetizer__socket"  # paramiko.packet.Packetizer keeps its socket here
    if packetizer is None or getattr(packetizer, attr, None) is not sock:
        return False
    setattr(packetizer, attr, QuickAckSocket(sock))
    return True

# paramiko's transport thread logs handshake failures (with a traceback) at ERROR; with no handler
# configured Python prints them on stderr. The failure reaches the user as an Unreachable instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


STRICT_DEFAULT = "accept-new"


def strict_mode(value: str | None) -> str:
    """ssh_config's StrictHostKeyChecking -> "yes" | "accept-new" | "no" (OpenSSH's spellings:
    ask cannot prompt here, so it refuses like yes; off = no; unset = accept-new)."""
    v = (value or STRICT_DEFAULT).strip().lower()
    if v in ("yes", "ask", "true"):
        return "yes"
    if v in ("no", "off", "false"):
        return "no"
    return "accept-new"


def host_key_name(host: str, port: int) -> str:
    """The name a host's key is recorded under in known_hosts (OpenSSH's and paramiko's form)."""
    return host if int(port) == 22 else f"[{host}]:{port}"


def keygen_remove(name: str, known_hosts: str) -> str:
    """The command that removes a host's recorded key, runnable as printed."""
    return f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(known_hosts)}"


class _UnknownKey(Exception):
    def __init__(self, hostname: str, key) -> None:  # noqa: ANN001
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def _host_key_policy(mode: str, path: str, known):  # noqa: ANN001 (known: paramiko.HostKeys)
    import paramiko

    def record(client, hostname, key) -> None:  # noqa: ANN001
        with _known_hosts_lock:
            client.get_host_keys().add(hostname, key.get_name(), key)
            with open(path, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    class Policy(paramiko.MissingHostKeyPolicy):
        """Called by paramiko only for a host with no known key (a changed key of a known host is
        paramiko's BadHostKeyException), except under "no", where no key is loaded for checking."""

        def missing_host_key(self, client, hostname, key):  # noqa: ANN001
            if mode == "yes":
                raise _UnknownKey(hostname, key)
            if mode == "no" and known.lookup(hostname) is not None:
                return  # a changed key, accepted as OpenSSH does under "no": not recorded
            record(client, hostname, key)

    return Policy()


class SSHTransport:
    """One fabric Connection per host, reused for every channel of a task."""

    def __init__(self, host: Host, inventory: Inventory) -> None:
        self.host = host
        self.inventory = inventory
        self.conn = None
        self.conn_attempt = None
        self.hop_known_hosts: dict[int, str] = {}
        self.watch: LinkWatch | None = None

    def link_error(self) -> str | None:
        """Why the link to the host is known dead (keepalives unanswered), or None."""
        return self.watch.dead if self.watch is not None else None

    def _config(self):
        from fabric import Config

        ssh_config = self.inventory.ssh_config or os.environ.get("OPS_SSH_CONFIG")
        if ssh_config:
            return Config(runtime_ssh_path=ssh_config)
        return Config()

    def known_hosts_files(self, conn) -> list[str]:
        """Every known_hosts file for this connection; new keys are recorded in the first."""
        value = self.inventory.known_hosts or conn.ssh_config.get("userknownhostsfile")
        if isinstance(value, list):
            value = " ".join(value)
        if value and '"' in value:  # paramiko strips the outer quotes of `"a" "b c"`: put them back
            value = f'"{value}"'
        names = (shlex.split(value) if value else []) or ["~/.ssh/known_hosts"]
        if any(not n.startswith(("/", "~", "%")) for n in names[1:]):  # `"/a/known hosts"`, unquoted
            names = [value.strip('"')]
        home = os.path.expanduser("~")
        return [os.path.expanduser(n.replace("%d", home)) for n in names]

    def known_hosts_path(self, conn) -> str:
        return self.known_hosts_files(conn)[0]

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
        self.conn_attempt = conn
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
                quick_acks(hop.transport, sock)
            hop = hop.gateway if isinstance(hop.gateway, Connection) else None
        self.conn = conn
        interval, count = keepalive_settings(conn.ssh_config)
        self.watch = LinkWatch(conn.transport, interval, count)

    def _connect_error(self, exc: Exception, kh: str, target: str, timeout: int) -> Exception:
        """paramiko's and the socket's exceptions -> the OpsError a person can act on."""
        import paramiko

        if isinstance(exc, paramiko.BadHostKeyException | _UnknownKey):
            hop = self._hop_named(exc.hostname)
            name = host_key_name(hop.host, hop.port) if hop is not None else exc.hostname
            kh = self.hop_known_hosts.get(id(hop), kh)
            if isinstance(exc, _UnknownKey):
                return HostKeyUnknown(
                    self.host.name,
                    f"host key for {name} is not known ({exc.key.get_name()} {fingerprint(exc.key)}) "
                    f"and StrictHostKeyChecking is yes: refusing to connect to {target}",
                    "check that fingerprint with the box's owner, then record it: "
                    f"`ssh -o StrictHostKeyChecking=accept-new {shlex.quote(self.host.ssh or name)} true`",
                )
            return HostKeyChanged(
                self.host.name,
                f"host key for {exc.hostname} has CHANGED (got {exc.key.get_name()} "
                f"{fingerprint(exc.key)}, known_hosts {kh} has another); "
                f"refusing to connect to {target}",
                "if the change is expected (the box was reinstalled), remove the old key and run again: "
                f"`{keygen_remove(name, kh)}`",
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

    def _hop_named(self, hostname: str):
        """The Connection (the host or one of its ProxyJump hops) whose host is ``hostname``."""
        from fabric import Connection

        hop = self.conn_attempt
        while isinstance(hop, Connection):
            if hostname in (hop.host, host_key_name(hop.host, hop.port)):
                return hop
            hop = hop.gateway
        return None

    def _trust(self, conn) -> str:
        """Load the connection's known_hosts files and apply its StrictHostKeyChecking; return the
        file new keys are recorded in."""
        import paramiko

        files = self.known_hosts_files(conn)
        kh = files[0]
        if kh != os.devnull:
            Path(kh).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            Path(kh).touch(mode=0o600, exist_ok=True)
        known = paramiko.HostKeys()
        for f in files:
            if os.path.isfile(f):
                known.load(f)
        mode = strict_mode(conn.ssh_config.get("stricthostkeychecking"))
        if mode != "no":  # under "no" a changed key is not refused, so none is checked
            for f in files:
                if os.path.isfile(f):
                    conn.client.get_host_keys().load(f)
        conn.client.set_missing_host_key_policy(_host_key_policy(mode, kh, known))
        self.hop_known_hosts[id(conn)] = kh  # for the advice of a host-key error on this hop
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
        if self.watch is not None:
            self.watch.stop()
        if conn is not None:
            _close_hops(conn)

    def describe(self) -> str:
        return f"ssh {self.host.ssh}"


DEFAULT_ALIVE_INTERVAL = 5.0  # s between keepalives when ssh_config sets no ServerAliveInterval
DEFAULT_ALIVE_COUNT = 3  # unanswered keepalives before the link is declared dead (OpenSSH's default)


def keepalive_settings(ssh_config) -> tuple[float, int]:
    """(ServerAliveInterval, ServerAliveCountMax) from the host's ssh_config, with a sane default:
    OpenSSH sends none by default, which leaves a dead link unnoticed for minutes (TCP
    retransmissions); 5 s x 3 notices it in 15 s. ServerAliveInterval 0 keeps the default too: a
    tool that must give up on dead links cannot turn the check off."""

    def number(key: str, default: float) -> float:
        try:
            value = float(ssh_config.get(key, default))
        except (TypeError, ValueError):
            return default
        return value if value > 0 else default

    return number("serveraliveinterval", DEFAULT_ALIVE_INTERVAL), int(number("serveralivecountmax",
                                                                             DEFAULT_ALIVE_COUNT))


class LinkWatch:
    """OpenSSH's ServerAlive for a paramiko transport. paramiko's own keepalive sends requests
    that want no reply, so it never notices a dead link. Here a `keepalive@openssh.com` global
    request wants a reply (any server answers it, with a failure) every `interval` seconds; when
    none has been answered for `count` intervals the link is dead: the transport is closed, which
    wakes every channel reader at once (it reads EOF; the caller asks `dead` why). The judge is a
    thread of its own, so a ping stuck behind a full send buffer on a dead link is judged too."""

    def __init__(self, transport, interval: float, count: int) -> None:  # noqa: ANN001
        self.transport = transport
        self.interval = interval
        self.count = count
        self.dead: str | None = None
        self._waiting_since: float | None = None  # the oldest unanswered ping
        self._stop = threading.Event()
        for target in (self._pinger, self._judge):
            threading.Thread(target=target, name="ops-keepalive", daemon=True).start()

    @property
    def window(self) -> float:
        return self.interval * self.count

    def _ping(self, answered: threading.Event) -> None:
        from paramiko.common import cMSG_GLOBAL_REQUEST
        from paramiko.message import Message

        self.transport.completion_event = answered  # set by paramiko on REQUEST_SUCCESS/FAILURE
        m = Message()
        m.add_byte(cMSG_GLOBAL_REQUEST)
        m.add_string("keepalive@openssh.com")
        m.add_boolean(True)
        self.transport._send_user_message(m)

    def _pinger(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            answered = threading.Event()
            try:
                self._ping(answered)
            except Exception:  # the transport broke under us: its readers see EOF already
                return
            if answered.wait(self.interval):
                self._waiting_since = None

    def _judge(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 2)):
            since = self._waiting_since
            if since is not None and time.monotonic() - since >= self.window:
                self.dead = (f"the link died: no answer to keepalives for {self.window:g}s "
                             f"(ServerAliveInterval {self.interval:g} x ServerAliveCountMax {self.count})")
                self._stop.set()
                try:
                    self.transport.close()
                except Exception:
                    pass
                return
            if not self.transport.is_active():
                return

    def stop(self) -> None:
        self._stop.set()


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
