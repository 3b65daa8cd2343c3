"""The client side of the agent protocol: start it on a host (shipping it if needed), call ops."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ops import agentpkg
from ops.errors import AgentError, HostError, LinkDied, LockHeld, TransportError
from ops.transport import Channel

EventHandler = Callable[[dict[str, Any]], None]
STREAM_CHUNK = 256 * 1024  # bytes per write of a streamed file
AGENT_START_TIMEOUT = 60.0  # s for the agent's hello; a host that takes longer is reported


class AgentSession:
    """One agent process on one host, fed requests as JSON lines for the whole task."""

    def __init__(self, transport: Any, python: str, host_name: str, timeout: float) -> None:
        self.transport = transport
        self.python = python
        self.host_name = host_name
        self.timeout = timeout
        self.channel: Channel | None = None
        self.hello: dict[str, Any] = {}
        self._next_id = 0
        self.shipped = False
        self.broken: str | None = None  # why the channel must not be used again

    def start(self) -> dict[str, Any]:
        """Run the agent, with the interpreter the host's ``python`` resolved to last time when it
        is known (ops/hostcache.py); a start that fails that way forgets it and starts again with
        ``python`` itself."""
        from ops import hostcache

        if getattr(self.transport, "held", False):  # a held agent (ops/persist.py): already running
            return self._start(None, None)
        k = hostcache.key(self.host_name, self.transport.describe(), self.python)
        known = hostcache.load(k)
        resolved, env = known.get("python"), known.get("env")
        if not isinstance(resolved, str) or not isinstance(env, dict):
            resolved = None
        try:
            hello = self._start(resolved, env)
        except AgentError:
            if not resolved:
                raise
            hostcache.forget(k)
            resolved = None
            hello = self._start(None, None)
        exe, delta = hello.get("executable"), hello.get("env_delta")
        if resolved is None:  # started the configured way: remember how to skip the wrapper
            if isinstance(exe, str) and exe.startswith("/") and isinstance(delta, dict):
                hostcache.remember(k, python=exe, env=delta)
            else:
                hostcache.forget(k)  # no login environment to compare with: keep the wrapper
        return hello

    def _start(self, resolved: str | None, env: dict[str, Any] | None) -> dict[str, Any]:
        """Run the agent; ship it first if the host does not have this version, and ship it again
        (once) if the copy there is damaged (python ran but no hello, or a hello of another
        version). Started by its resolved path, it first reads the wrapper's environment ``env``
        on stdin (ops/agent/loginenv.py)."""
        b = agentpkg.bundle()
        for _ in range(3):
            ch = self.transport.channel(agentpkg.run_command(self.python, b, resolved))
            if resolved:
                try:
                    ch.send(json.dumps({"env": env}, separators=(",", ":")).encode() + b"\n")
                except TransportError:
                    pass  # the command ended first (no agent here yet: it said need-agent)
            # the interpreter's start-up (and the login shell's rc files) must not take long
            line = ch.read_line(time.monotonic() + min(self.timeout, AGENT_START_TIMEOUT))
            if line is None:
                code = ch.exit_status(2.0)
                err = ch.stderr_text().strip()
                ch.close()
                if code not in (126, 127) and not self.shipped:  # the interpreter ran: a bad copy
                    self._install(b)
                    continue
                raise AgentError(
                    f"{self.host_name}: the agent did not start (exit {code}): {err or 'no output'}",
                    f"the host needs python3 >= 3.8 as `{self.python}` (set python = ... in hosts.toml)",
                )
            event = self._decode(line)
            kind = event.get("event")
            if kind == "hello" and event.get("version") == b.version:
                self.channel = ch
                self.hello = event
                return event
            ch.close()
            if self.shipped:
                break
            if kind == "need-agent" or kind == "hello":  # missing, or a damaged copy of another version
                self._install(b)
                continue
            raise AgentError(f"{self.host_name}: unexpected first line from the agent: {line[:200]!r}")
        raise AgentError(
            f"{self.host_name}: the agent could not be installed (shipped it, but it still does not run)",
            "check that $XDG_CACHE_HOME (or ~/.cache) on the host is writable and not full",
        )

    def _install(self, b: agentpkg.AgentBundle) -> None:
        ch = self.transport.channel(agentpkg.install_command(b))
        ch.send(b.data)
        ch.shutdown_write()
        code = ch.exit_status(self.timeout)
        err = ch.stderr_text().strip()
        ch.close()
        if code != 0:
            raise AgentError(
                f"{self.host_name}: shipping the agent failed (exit {code}): {err}",
                "check the host's disk space and that $HOME/.cache is writable",
            )
        self.shipped = True

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError:
            raise AgentError(
                f"{self.host_name}: the agent said something that is not JSON: {line[:200]!r}",
                "something in the remote shell start-up prints to stdout; silence it for "
                "non-interactive shells",
            ) from None
        if not isinstance(event, dict):
            raise AgentError(f"{self.host_name}: bad agent event {line[:200]!r}")
        return event

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        on_event: EventHandler | None = None,
        timeout: float | None = None,
        stream: str | None = None,
    ) -> Any:
        """One request, one round trip (plus streamed events). Returns the result's data.

        ``stream``: a file whose bytes follow the request line (the agent copies them to a file
        on the host in chunks): a bundle of any size is never held in memory on either end."""
        if self.broken:
            kind = LinkDied if self._link_error() else TransportError
            raise kind(self.host_name, f"'{op}' was not sent: the channel to the agent is not used "
                                       f"again after: {self.broken}")
        if self.channel is None:
            self.start()
        assert self.channel is not None
        try:
            return self._call(op, args, on_event, timeout, stream)
        except TransportError as exc:
            # a channel that timed out or died is never used again: a late answer to the old
            # request must not be read as the answer to a new one, and a dead link must not cost
            # a full timeout per remaining step
            link = self._link_error()
            self.broken = link or exc.message
            if link and not isinstance(exc, LinkDied):
                raise LinkDied(self.host_name, f"{link} during '{op}'") from None
            raise

    def _link_error(self) -> str | None:
        probe = getattr(self.transport, "link_error", None)
        return probe() if probe is not None else None

    def _call(self, op: str, args: dict[str, Any] | None, on_event: EventHandler | None,
              timeout: float | None, stream: str | None) -> Any:
        assert self.channel is not None
        self._next_id += 1
        rid = self._next_id
        head: dict[str, Any] = {"id": rid, "op": op, "args": args or {}}
        if stream is not None:
            head["stream"] = os.path.getsize(stream)
        req = json.dumps(head, separators=(",", ":"))
        self.channel.send(req.encode() + b"\n")
        if stream is not None:
            with open(stream, "rb") as f:
                while chunk := f.read(STREAM_CHUNK):
                    self.channel.send(chunk)
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            line = self.channel.read_line(deadline)
            if line is None:
                err = self.channel.stderr_text().strip()
                raise TransportError(
                    self.host_name, f"the agent ended during '{op}'" + (f": {err}" if err else "")
                )
            event = self._decode(line)
            if event.get("id") != rid:
                continue
            kind = event.get("event")
            if kind == "result":
                return event.get("data")
            if kind == "error" and event.get("type") == "HostBusy":
                raise LockHeld(
                    f"{self.host_name}: {event.get('message')}",
                    "wait for it to finish, or pass --lock-wait SECONDS to wait for it",
                )
            if kind == "error" and event.get("os_error"):
                raise host_error(self.host_name, op, event)
            if kind == "error":
                raise AgentError(
                    f"{self.host_name}: agent op '{op}' failed: {event.get('type')}: {event.get('message')}",
                    "this is a bug in the agent; the trace is in --json output",
                )
            if on_event is not None:
                on_event(event)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.shutdown_write()
            if not self.broken:  # a dead link answers nothing: do not wait for it
                self.channel.exit_status(5.0)
            self.channel.close()
            self.channel = None


def host_error(host: str, op: str, event: dict[str, Any]) -> HostError:
    """An agent's system error (its errno, path and what it was writing) as the error a person can
    act on: what was not written where, and why; exit 1, the host is reachable."""
    path, what, why = event.get("path"), event.get("what"), event.get("strerror") or event.get("message")
    if what:
        text = f"{host}: '{op}' failed: {what} was not written to {path}: {why}"
    elif path:
        text = f"{host}: '{op}' failed on the host: {path}: {why}"
    else:
        text = f"{host}: '{op}' failed on the host: {why}"
    code = event.get("errno") or ""
    where = path or "the state directory"
    if code in ("ENOSPC", "EDQUOT"):
        advice = f"free space on the host's filesystem holding {where} (df -h there), then run again"
    elif code in ("EACCES", "EPERM", "EROFS"):
        advice = f"make {where} writable by the SSH user on the host, then run again"
    else:
        advice = "fix the cause on the host, then run again"
    return HostError(text, advice, errno_name=code, path=path)
