"""The warm path, holder side: one background process per user and version that keeps SSH hosts'
connections and agents alive between tasks (see ops/persist.py for the client side).

    python -m ops.holder SOCKET     (started by ops.persist; reads its first "warm" request on stdin)

Requests, one JSON line per unix-socket connection (peers of another uid are refused, SO_PEERCRED):
- ``{"op": "warm", "inventory": PATH, "ssh_config": ..., "hosts": [NAME], "persist": S}``: connect
  those hosts and start their agents (in the background), to hold them ``persist`` seconds idle.
- ``{"op": "attach", "key": K, "version": V}``: when the held agent of key K is of version V, free,
  and alive (its connection active and a ping answered within PING_TIMEOUT, checked now), answer
  ``{"ok": true, "hello": ...}`` and from then on relay lines between the socket and the agent.
  Otherwise ``{"ok": false, "why": ...}`` (the client connects directly, as without persist); a held
  agent that failed the check is closed.
- ``{"op": "disconnect"}``: close everything held, answer, exit.

A held agent is closed (its channel closed: the agent finishes what it was handed and exits,
releasing whatever it holds) on any error: its connection or channel ending, an error event, a
client that leaves with a request unanswered (its stdin is then closed, as a fresh agent's would
be, and its output relayed to the end), or, after a client's session, any deploy lock or host
operation lock still held (asked with the agent's ``held_locks`` op). So nothing is ever held
between commands but an idle agent. The holder exits when it has held nothing for ``persist`` s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import select
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ops import agentpkg
from ops.errors import OpsError

PING_TIMEOUT = 3.0
LINGER = 5.0  # s a holder with nothing held waits for a warm request before exiting


@dataclasses.dataclass
class Held:
    key: str
    session: Any  # ops.session.HostSession, open
    persist: float
    last_used: float
    busy: bool = False


class Holder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.held: dict[str, Held] = {}
        self.warming: set[str] = set()
        self.persist = 60.0
        self.quit = threading.Event()
        self.last_activity = time.monotonic()
        self.version = agentpkg.bundle().version

    # --- holding ---------------------------------------------------------------------------

    def warm(self, req: dict[str, Any]) -> dict[str, Any]:
        from ops import inventory as inventory_mod
        from ops import persist

        self.persist = max(1.0, float(req.get("persist") or 60))
        inv = inventory_mod.load(req["inventory"])
        if req.get("ssh_config") and not inv.ssh_config:
            inv = dataclasses.replace(inv, ssh_config=req["ssh_config"])
        started = []
        for name in req.get("hosts") or []:
            host = inv.hosts.get(name)
            if host is None or not persist.enabled(inv, host):
                continue
            key = persist.host_key(inv, host)
            with self.lock:
                if key in self.held or key in self.warming:
                    continue
                self.warming.add(key)
            threading.Thread(target=self._connect, args=(inv, host, key, inv.persist), daemon=True).start()
            started.append(name)
        return {"ok": True, "warming": started}

    def _connect(self, inv: Any, host: Any, key: str, persist_s: float) -> None:
        from ops.session import HostSession

        session = HostSession(inv, host)
        try:
            session.open()
        except Exception as exc:  # noqa: BLE001 (the next task connects directly and reports it)
            _log(f"warm {host.name}: {exc}")
            with contextlib.suppress(Exception):
                session.close()
            session = None
        with self.lock:
            self.warming.discard(key)
            if session is not None:
                self.held[key] = Held(key, session, persist_s, time.monotonic())
            self.last_activity = time.monotonic()

    def drop(self, entry: Held, why: str) -> None:
        with self.lock:
            if self.held.get(entry.key) is entry:
                del self.held[entry.key]
        _log(f"closed {entry.session.host.name}: {why}")
        with contextlib.suppress(Exception):
            entry.session.close()

    def expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            old = [e for e in self.held.values() if not e.busy and now - e.last_used > e.persist]
        for e in old:
            self.drop(e, "idle")

    def _alive(self, entry: Held) -> str:
        """'' when the held connection and agent answer now, else why not."""
        conn = getattr(entry.session.transport, "conn", None)  # paramiko's
        t = getattr(conn, "transport", None)
        if conn is not None and (t is None or not t.is_active()):
            return "the connection is closed"
        ch = entry.session.agent.channel
        if ch is None:
            return "the agent's channel is closed"
        proc = getattr(ch, "proc", None)  # the openssh transport's ssh process
        if proc is not None and proc.poll() is not None:
            return f"ssh exited ({proc.returncode})"
        try:
            entry.session.agent.call("ping", timeout=PING_TIMEOUT)
        except OpsError as exc:
            return f"the agent did not answer a ping: {exc}"
        return ""

    # --- one client ------------------------------------------------------------------------

    def serve_client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10.0)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.geteuid():
                _log(f"refused a peer of uid {uid}")
                return
            line = _read_line(conn)
            req = json.loads(line) if line else {}
            op = req.get("op")
            if op == "warm":
                _send(conn, self.warm(req))
            elif op == "disconnect":
                with self.lock:
                    entries = list(self.held.values())
                for e in entries:
                    self.drop(e, "inv disconnect")
                _send(conn, {"ok": True, "closed": len(entries)})
                self.quit.set()
            elif op == "attach":
                self.attach(conn, req)
            else:
                _send(conn, {"ok": False, "why": f"unknown op {op!r}"})
        except (OSError, ValueError) as exc:
            _log(f"client: {exc}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self.last_activity = time.monotonic()

    def attach(self, conn: socket.socket, req: dict[str, Any]) -> None:
        if req.get("version") != self.version:
            _send(conn, {"ok": False, "why": "another agent version"})
            return
        with self.lock:
            entry = self.held.get(req.get("key", ""))
            if entry is None or entry.busy:
                _send(conn, {"ok": False, "why": "not held" if entry is None else "busy"})
                return
            entry.busy = True
        why = self._alive(entry)
        if why:
            self.drop(entry, why)
            _send(conn, {"ok": False, "why": why})
            return
        try:
            _send(conn, {"ok": True, "hello": entry.session.agent.hello})
            verdict = self.relay(conn, entry)
        except (OSError, OpsError) as exc:
            verdict = f"relay: {exc}"
        if not verdict:
            verdict = self._locks_held(entry)
        if verdict:
            self.drop(entry, verdict)
        else:
            with self.lock:
                entry.busy = False
                entry.last_used = time.monotonic()

    def _locks_held(self, entry: Held) -> str:
        try:
            held = entry.session.agent.call("held_locks", timeout=PING_TIMEOUT)
        except OpsError as exc:
            return f"held_locks: {exc}"
        if held.get("deploy") or held.get("host"):
            return "it still holds a lock after its client left"
        return ""

    def relay(self, conn: socket.socket, entry: Held) -> str:
        """Lines client -> agent (and, after a request line that announces one, its stream's bytes
        as they are) and agent -> client until the client's session ends. '' when it
        ended cleanly (every request answered, no error), else why the agent must be closed."""
        ch = entry.session.agent.channel
        conn.settimeout(None)
        outstanding: set[Any] = set()
        pending = b""
        raw_left = 0  # bytes of a request's stream still to pass on as they are (not lines)
        client_open = True
        error = ""
        while True:
            if not client_open and not outstanding:
                return error
            watch = [ch._fileno()] + ([conn] if client_open else [])
            r = [] if b"\n" in ch._buf else select.select(watch, [], [], 1.0)[0]
            if conn in r:
                data = conn.recv(65536)
                if not data:
                    client_open = False
                    if outstanding:  # as a fresh agent's: its stdin closes, it finishes, it exits
                        ch.shutdown_write()
                        error = error or "its client left with a request unanswered"
                    continue
                pending += data
                while pending:
                    if raw_left:  # a stream (a git bundle) follows its request line: raw bytes
                        chunk, pending = pending[:raw_left], pending[raw_left:]
                        ch.send(chunk)
                        raw_left -= len(chunk)
                        continue
                    if b"\n" not in pending:
                        break
                    line, _, pending = pending.partition(b"\n")
                    with contextlib.suppress(ValueError, AttributeError, TypeError):
                        req = json.loads(line)
                        if "op" in req:  # a request: it must be answered before the agent is kept
                            outstanding.add(req.get("id"))
                            raw_left = max(0, int(req.get("stream") or 0))
                    ch.send(line + b"\n")
            if b"\n" in ch._buf or ch._fileno() in r:
                line = ch.read_line(time.monotonic() + 60.0)
                if line is None:
                    return "the agent's channel ended"
                with contextlib.suppress(ValueError, AttributeError):
                    event = json.loads(line)
                    if event.get("event") in ("result", "error"):
                        outstanding.discard(event.get("id"))
                    if event.get("event") == "error":
                        error = error or f"an error event: {event.get('type')}"
                if client_open:
                    try:
                        conn.sendall(line + b"\n")
                    except OSError:
                        client_open = False
                        if outstanding:
                            ch.shutdown_write()
                        error = error or "its client went away"

    # --- main loop -------------------------------------------------------------------------

    def run(self, first: dict[str, Any] | None) -> int:
        lockf = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)  # held for its life
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another holder of this version is starting or running: give it the work
            return self._forward(first)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            srv.bind(self.path)
        finally:
            os.umask(old)
        srv.listen(64)
        srv.settimeout(1.0)
        if first:
            self.warm(first)
        try:
            while not self.quit.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    conn = None
                if conn is not None:
                    threading.Thread(target=self.serve_client, args=(conn,), daemon=True).start()
                self.expire()
                with self.lock:
                    idle = not self.held and not self.warming
                if idle and time.monotonic() - self.last_activity > LINGER:
                    break
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            srv.close()
            with self.lock:
                entries = list(self.held.values())
            for e in entries:
                self.drop(e, "holder exit")
        return 0

    def _forward(self, first: dict[str, Any] | None) -> int:
        from ops import persist

        deadline = time.monotonic() + 10.0
        while first and time.monotonic() < deadline:
            got = persist.request(Path(self.path), first)
            if got is not None:
                got[0].close()
                return 0
            time.sleep(0.05)
        return 0


def _read_line(conn: socket.socket) -> bytes | None:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > 1 << 20:
            return None
    return buf.partition(b"\n")[0]


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _log(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    from ops import persist

    persist.CLIENT["on"] = False
    args = sys.argv[1:] if argv is None else argv
    first = None
    line = sys.stdin.readline() if not sys.stdin.isatty() else ""
    if line.strip():
        with contextlib.suppress(ValueError):
            first = json.loads(line)
    return Holder(args[0]).run(first)


if __name__ == "__main__":
    sys.exit(main())
