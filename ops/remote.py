"""Hosts and what runs on them, for user-written steps: the inventory, sessions, commands,
small files and the built-in operations. The public names are re-exported by ``ops.api``
(import them from there); see its docstring and the README's "Your own steps".
"""

from __future__ import annotations

import base64
import os
import posixpath
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ops.errors import ActionFailed, UsageError
from ops.inventory import Host, Inventory
from ops.session import HostOutcome, HostSession

T = TypeVar("T")

DEFAULT_MAX_OUTPUT = 64 * 1024  # characters of stdout / stderr kept in a Result (the tail)
DEFAULT_MAX_FILE = 1024 * 1024  # bytes read_file / write_file move at most
CALL_MARGIN = 30.0  # s added to a command's timeout for the agent call that carries it


# --- inventory and hosts ------------------------------------------------------------------------


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Load and validate hosts.toml: ``path``, else ``$OPS_INVENTORY``, else ``./hosts.toml``.

    A bad inventory raises :class:`ops.errors.InventoryError` (exit 2) naming the file, the table
    and the key."""
    from ops import inventory

    return inventory.load(path or os.environ.get("OPS_INVENTORY") or "hosts.toml")


def resolve_hosts(inventory: Inventory, spec: str | Sequence[str] | None = None) -> list[Host]:
    """The hosts named by ``spec``: a host name, a comma list, a group, ``all``, or a list of
    those; ``None`` means the only host (a :class:`UsageError` if there are several)."""
    from ops import inventory as inv_mod

    if spec is not None and not isinstance(spec, str):
        spec = ",".join(spec)
    return inv_mod.resolve_hosts(inventory, spec)


def _host(inventory: Inventory, host: str | Host) -> Host:
    if isinstance(host, Host):
        return host
    found = resolve_hosts(inventory, host)
    if len(found) != 1:
        raise UsageError(f"'{host}' names {len(found)} hosts; a session is on one host",
                         "pass one host name, or use on_hosts() / TaskContext.each() for several")
    return found[0]


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What a command did on a host, in the spirit of Invoke's ``Result``.

    ``stdout`` and ``stderr`` are the last part of the output (bounded, see ``truncated``) with the
    secrets of the host's services replaced by ``***``."""

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    truncated: bool = False  # the output was longer than what was kept (its tail is here)

    @property
    def ok(self) -> bool:
        """True when the command exited 0 within its timeout."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def failed(self) -> bool:
        """The opposite of :attr:`ok` (as in Invoke)."""
        return not self.ok

    @property
    def return_code(self) -> int:
        """Invoke's name for :attr:`exit_code`."""
        return self.exit_code

    def tail(self, lines: int = 5, stream: str = "stderr") -> list[str]:
        """The last non-empty ``lines`` of ``stream`` ("stdout" or "stderr")."""
        text = self.stdout if stream == "stdout" else self.stderr
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]

    def summary(self) -> str:
        """One line: the command and how it ended (plus the last error line when it failed)."""
        how = f"timed out after {self.duration:.1f}s" if self.timed_out else f"exit {self.exit_code}"
        line = f"`{self.command}`: {how}"
        if self.failed:
            last = self.tail(1) or self.tail(1, "stdout")
            if last:
                line += f": {last[0]}"
        return line

    def __bool__(self) -> bool:
        return self.ok


class CommandFailed(ActionFailed):
    """A command run with ``check=True`` exited non-zero or timed out (exit 1)."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(f"{result.host}: {result.summary()}",
                         "its output is in the Result (stdout/stderr) when run with check=False")


@dataclass(frozen=True)
class Check:
    """A verdict a step can return: passed or not, and why (shown in the task's table)."""

    ok: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok



# --- a session on one host ----------------------------------------------------------------------


def _quote_argv(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _tail(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    cut = text[-limit:]
    nl = cut.find("\n")
    return (cut[nl + 1:] if nl >= 0 else cut), True


class Session:
    """A connection to one host and its agent. Open one with :func:`session` (or receive one from
    :func:`on_hosts`, :func:`run_step`, :meth:`TaskContext.each`)."""

    def __init__(self, raw: HostSession) -> None:
        self._raw = raw

    @property
    def host(self) -> Host:
        """The inventory host (its services, checkout path, state dir...)."""
        return self._raw.host

    @property
    def name(self) -> str:
        """The inventory name of the host."""
        return self._raw.host.name

    @property
    def inventory(self) -> Inventory:
        """The inventory the session was opened from."""
        return self._raw.inventory

    @property
    def checkout(self) -> str:
        """The host's checkout (``path`` in hosts.toml), as written there (``~`` unexpanded)."""
        return self._raw.host.path

    def path(self, relative: str) -> str:
        """A path on the host: relative paths are taken under the checkout; ``~`` and absolute
        paths are kept."""
        if relative in ("", "."):
            return self.checkout
        if relative.startswith(("/", "~", "$")):
            return relative
        return posixpath.join(self.checkout, relative)

    def _secret_args(self) -> dict[str, Any]:
        """What the agent needs to redact the host's secrets from what it sends back."""
        return {"base": self.host.path, "all_services": [s.to_agent() for s in self.host.services]}

    # --- commands and files -------------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = False,
        stdin: str | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> Result:
        """Run a command on the host and return its :class:`Result`.

        ``command``: an argv list (run without a shell; preferred) or a string run by ``sh -c``.
        ``cwd``: relative to the host's checkout (default: the checkout). ``env``: added to the
        agent's environment (not for secrets: read those from files on the host). ``timeout``:
        seconds (default: the host's ``command_timeout``); on expiry the command's whole process
        group is killed and ``timed_out`` is set. Output: the last ``max_output`` characters of
        each stream, redacted of the host's secrets. ``check=True`` raises :class:`CommandFailed`
        unless it exited 0 in time."""
        if isinstance(command, str):
            shown, cmd = command, command
        else:
            cmd = [str(a) for a in command]
            if not cmd:
                raise UsageError(f"{self.name}: run() needs a command", "pass an argv list or a string")
            shown = _quote_argv(cmd)
        secs = float(timeout if timeout is not None else self.host.command_timeout)
        if secs <= 0:
            raise UsageError(f"{self.name}: run(timeout=...) must be more than 0, got {timeout!r}")
        args: dict[str, Any] = {
            **self._secret_args(),
            "cmd": cmd,
            "cwd": self.path(cwd or "."),
            "env": dict(env or {}),
            "timeout": secs,
            "return_bytes": int(max_output),
        }
        if stdin:
            args["stdin"] = stdin
        data = self._raw.call("exec", args, timeout=secs + CALL_MARGIN)
        out, cut_out = _tail(data.get("stdout") or "", max_output)
        err, cut_err = _tail(data.get("stderr") or "", max_output)
        result = Result(
            host=self.name,
            command=shown,
            exit_code=int(data["exit_code"]) if data.get("exit_code") is not None else -1,
            stdout=out,
            stderr=err,
            duration=float(data.get("duration") or 0.0),
            timed_out=bool(data.get("timed_out")),
            truncated=bool(data.get("truncated") or cut_out or cut_err),
        )
        if check and result.failed:
            raise CommandFailed(result)
        return result

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_MAX_FILE,
                  missing_ok: bool = False) -> str | None:
        """The text of a small UTF-8 file on the host (relative paths: under the checkout), with
        the host's secrets replaced by ``***``. A file larger than ``max_bytes`` is refused
        (:class:`ActionFailed`, naming the path and its size); a missing file is an error too,
        or ``None`` with ``missing_ok=True``."""
        data = self._raw.call("file_read", {**self._secret_args(), "path": self.path(path),
                                            "max_bytes": int(max_bytes)})
        if not data["ok"]:
            if missing_ok and data.get("missing"):
                return None
            raise ActionFailed(f"{self.name}: {data['error']}")
        return str(data["text"])

    def write_file(self, path: str, content: str | bytes, *, mode: int | None = None,
                   make_dirs: bool = False, max_bytes: int = DEFAULT_MAX_FILE) -> str:
        """Write a small file on the host atomically (a temp file in the same directory, flushed,
        then renamed over the target: a reader never sees half of it). Relative paths are under
        the checkout. ``mode`` defaults to the old file's (else 0644 less the umask);
        ``make_dirs`` creates missing parent directories. Returns the absolute path written."""
        raw = content.encode() if isinstance(content, str) else bytes(content)
        if len(raw) > max_bytes:
            raise UsageError(f"{self.name}: write_file({path!r}): {len(raw)} bytes is more than "
                             f"max_bytes={max_bytes}", "this is for small files; deploy large ones")
        data = self._raw.call("file_write", {"base": self.host.path, "path": self.path(path),
                                             "data": base64.b64encode(raw).decode(), "mode": mode,
                                             "make_dirs": make_dirs, "max_bytes": int(max_bytes)})
        if not data["ok"]:
            raise ActionFailed(f"{self.name}: {data['error']}")
        return str(data["path"])

    # --- the built-in operations (the objects the built-in tasks render) ------------------

    def status(self, services: Sequence[str] | None = None, health: bool = True) -> list[dict[str, Any]]:
        """Per service (children with their supervisor): state, pid, uptime, port holder, health;
        what ``inv status`` shows (one dict per service)."""
        from ops import control

        return list(control.status(self._raw, list(services or []), health=health))

    def start(self, services: Sequence[str] | None = None, lock_wait: float = 0.0) -> Any:
        """Start services in dependency order with their gates (``inv start``): a
        ``control.PhaseResult`` (``.ok``, ``.services``)."""
        return self._phase("start", services, lock_wait)

    def stop(self, services: Sequence[str] | None = None, lock_wait: float = 0.0) -> Any:
        """Stop services, supervisors first (``inv stop``): a ``control.PhaseResult``."""
        return self._phase("stop", services, lock_wait)

    def restart(self, services: Sequence[str] | None = None, lock_wait: float = 0.0) -> Any:
        """Stop then start (``inv restart``): a ``control.PhaseResult``."""
        return self._phase("restart", services, lock_wait)

    def _phase(self, phase: str, services: Sequence[str] | None, lock_wait: float) -> Any:
        from ops import control

        self._raw.lock_wait = float(lock_wait)
        try:
            return getattr(control, phase)(self._raw, list(services or []))
        finally:
            self._raw.lock_wait = 0.0

    def logs(self, service: str, lines: int = 50) -> list[str]:
        """The last ``lines`` lines of a service's log, redacted (``inv logs``)."""
        from ops import control

        svc = control.with_children(self.host, [service])[0]
        return list(control.logs(self._raw, svc, int(lines))["lines"])

    def verify_tree(self, services: Sequence[str] | None = None) -> Any:
        """``inv verify.tree``: a ``verify.VerifyReport`` (``.ok``, ``.checks``, ``.summary()``)."""
        from ops import verify

        return verify.tree(self._raw, list(services or []))

    def verify_restart(self, service: str, signal: str = "KILL", timeout: float = 30.0) -> Any:
        """``inv verify.restart``: kill the supervised child, time its return (a ``VerifyReport``)."""
        from ops import verify

        return verify.restart(self._raw, service, signal=verify.signal_name(signal), timeout=timeout)

    def verify_orphans(self, services: Sequence[str] | None = None) -> Any:
        """``inv verify.orphans``: a ``VerifyReport``."""
        from ops import verify

        return verify.orphans(self._raw, list(services or []))

    def verify_health(self, services: Sequence[str] | None = None) -> Any:
        """``inv verify.health``: a ``VerifyReport``."""
        from ops import verify

        return verify.health(self._raw, list(services or []))

    def verify_heartbeat(self, services: Sequence[str] | None = None) -> Any:
        """``inv verify.heartbeat``: a ``VerifyReport``."""
        from ops import verify

        return verify.heartbeat(self._raw, list(services or []))

    def verify_watch(self, seconds: float = 10.0, services: Sequence[str] | None = None,
                     min_mem_mb: float | None = None, interval: float = 1.0) -> Any:
        """``inv verify.watch``: a ``VerifyReport`` with ``.samples``."""
        from ops import verify

        return verify.watch(self._raw, seconds, list(services or []), min_mem_mb, interval)

    def verify_all(self) -> Any:
        """``inv verify.all``: every check hosts.toml declares for the host's services (deploy's
        verify step), a ``VerifyReport``."""
        from ops import verify

        return verify.verify_all(self._raw)


@contextmanager
def session(host: str | Host, inventory: Inventory | None = None) -> Iterator[Session]:
    """Open a :class:`Session` on one host (by inventory name or :class:`Host`); closed at the end
    of the ``with`` block. ``inventory`` defaults to :func:`load_inventory`."""
    from ops.session import connect

    inv = inventory or load_inventory()
    with connect(inv, _host(inv, host)) as raw:
        yield Session(raw)


def on_hosts(
    fn: Callable[[Session], T],
    hosts: Sequence[str | Host] | str | None = None,
    inventory: Inventory | None = None,
    max_workers: int | None = None,
) -> dict[str, HostOutcome[T]]:
    """Run ``fn(session)`` on every host in parallel, each with its own connection. Partial
    failure is normal: an :class:`OpsError` on one host (unreachable, a failed command with
    ``check=True``...) becomes that host's outcome (``.error``) and never hides the others.
    Returns the outcomes keyed by inventory host name, in the order given."""
    from ops import session as sess

    inv = inventory or load_inventory()
    targets = _targets(inv, hosts)
    outcomes = sess.on_hosts(inv, targets, lambda raw: fn(Session(raw)), max_workers=max_workers)
    return {o.host: o for o in outcomes}


def _targets(inv: Inventory, hosts: Sequence[str | Host] | str | None) -> list[Host]:
    if hosts is None or isinstance(hosts, str):
        return resolve_hosts(inv, hosts)
    out: list[Host] = []
    for h in hosts:
        for one in ([h] if isinstance(h, Host) else resolve_hosts(inv, h)):
            if one.name not in {x.name for x in out}:
                out.append(one)
    return out
