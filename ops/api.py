"""The public API: write your own runbook steps as Invoke tasks, next to the built-in ones.

Everything a custom step needs, and nothing internal::

    from ops import api

    @api.task(help={"keep": "how many gh-* trees to keep"})
    def prune_trees(c: api.TaskContext, keep: int = 0) -> None:
        '''Prune git worktrees and remove trees/gh-* on the host (asks first).'''
        c.confirm("remove trees/gh-*")                 # type the host name, or pass --yes
        c.each("prune-trees", lambda s: s.run("git worktree prune && rm -rf trees/gh-*", check=True))

The task gets ``--host`` (name, comma list, group or ``all``), ``--json`` and ``--yes``, the tool's
error handling (an :class:`OpsError` is one clear message and its exit code, never a traceback),
its exit codes (0 ok, 1 a step failed, 2 bad arguments, 3 unreachable), rendering through
``ops.report``, and a journal entry per host and step (run id, user, host, step, outcome,
duration) in the local journal and the host's, shown by ``inv journal``.

Without Invoke, the same parts are plain library calls: :func:`load_inventory`,
:func:`resolve_hosts`, :func:`session` (one host, a context manager), :func:`on_hosts` (many hosts
in parallel, partial failure as elsewhere: outcomes keyed by inventory host name),
:func:`run_step` (the same, journaled), :func:`confirm`.

On a :class:`Session`: :meth:`Session.run` (a command, with a :class:`Result` in the spirit of
Invoke's), :meth:`Session.read_file` / :meth:`Session.write_file` (small files, atomic writes), and
every built-in operation (``status``, ``start``, ``stop``, ``restart``, ``logs``, the ``verify_*``
checks and ``verify_all``) returning the same objects the built-in tasks render.

This module is the stable surface: names not listed in ``__all__`` may change.
"""

from __future__ import annotations

import base64
import functools
import getpass
import inspect
import json as _json
import os
import posixpath
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import IO, Any, TypeVar

from ops.errors import ActionFailed, OpsError, UsageError
from ops.inventory import Host, Inventory, Service
from ops.session import HostOutcome, HostSession

__all__ = [
    "Check",
    "CommandFailed",
    "Confirmation",
    "ConfirmationRequired",
    "Host",
    "HostOutcome",
    "Inventory",
    "NotConfirmed",
    "OpsError",
    "Result",
    "Service",
    "Session",
    "StepResult",
    "TaskContext",
    "UsageError",
    "confirm",
    "load_inventory",
    "on_hosts",
    "resolve_hosts",
    "run_step",
    "session",
    "task",
]

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


@dataclass
class StepResult:
    """A journaled step on one host: its verdict, why, how long, and what the step returned."""

    host: str
    step: str
    ok: bool
    detail: str
    duration: float
    value: Any = None
    run_id: str = ""
    journaled: bool = False  # the host's journal has the entry

    def summary(self) -> str:
        """One line: the step's outcome and detail."""
        return f"{self.step}: {'ok' if self.ok else 'failed'}" + (f": {self.detail}" if self.detail else "")


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


# --- journaled steps ----------------------------------------------------------------------------


def new_run_id() -> str:
    """A run id like deploy's: ``20260131T120000-1a2b3c``."""
    from ops.deploy import new_run_id as deploy_run_id

    return deploy_run_id()


def judge(value: Any) -> tuple[bool, str]:
    """A step's verdict from what it returned: ``None``/``True``/a string pass; ``False`` fails;
    anything with ``.ok`` (a :class:`Result`, :class:`Check`, a ``VerifyReport``, a
    ``PhaseResult``) passes when ``.ok``, its detail from ``.summary()`` or ``.detail``."""
    if value is None:
        return True, ""
    if isinstance(value, bool):
        return value, ""
    if isinstance(value, str):
        return True, value
    if hasattr(value, "ok"):
        ok = bool(value.ok)
        summary = getattr(value, "summary", None)
        if callable(summary):
            return ok, str(summary())
        detail = getattr(value, "detail", None)
        if detail:
            return ok, str(detail)
        services = getattr(value, "services", None)
        if isinstance(services, list):
            return ok, ", ".join(f"{s.get('name')} {s.get('outcome')}" for s in services
                                 if isinstance(s, dict))
        return ok, ""
    return True, ""


def to_json(value: Any) -> Any:
    """A JSON-able view of what a step returned (dataclasses as dicts, reports by their
    ``to_json()``)."""
    if hasattr(value, "to_json") and callable(value.to_json):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _entry(run_id: str, user: str, host: str, step: str, task: str | None, ok: bool | None, detail: str,
           started: float, duration: float, error: OpsError | None,
           confirmed: Mapping[str, Any] | None) -> dict[str, Any]:
    if error is not None:
        outcome = "unreachable" if error.exit_code == 3 else "failed"
    else:
        outcome = "ok" if ok else "failed"
    entry: dict[str, Any] = {
        "kind": "step", "run_id": run_id, "user": user, "host": host, "step": step,
        "outcome": outcome, "error": error.message if error is not None else (None if ok else detail),
        "started_at": started, "duration": round(duration, 3),
        "steps": [{"name": step, "ok": bool(ok) and error is None,
                   "detail": error.message if error is not None else detail, "duration": round(duration, 3)}],
    }
    if task:
        entry["task"] = task
    if confirmed:
        entry["confirmed"] = dict(confirmed)
    return entry


def append_local_journal(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """Append entries to the local journal (``$OPS_JOURNAL``, else
    ``~/.local/state/ops/journal.jsonl``), one JSON line each; returns its path, or ``None`` when
    it cannot be written (a warning on stderr: the step itself is not undone)."""
    from ops.deploy import local_journal_path

    path = local_journal_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for e in entries:
                f.write(_json.dumps(e, sort_keys=True) + "\n")
    except OSError as exc:
        print(f"warning: cannot write the local journal {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    return str(path)


def run_step(
    name: str,
    fn: Callable[[Session], Any],
    hosts: Sequence[str | Host] | str | None = None,
    inventory: Inventory | None = None,
    *,
    run_id: str | None = None,
    task: str | None = None,
    confirmed: Confirmation | None = None,
    max_workers: int | None = None,
) -> dict[str, HostOutcome[StepResult]]:
    """Run ``fn(session)`` as the journaled step ``name`` on every host, in parallel.

    Each host's outcome is a :class:`StepResult` (its verdict from :func:`judge` of what ``fn``
    returned) or an error (an :class:`OpsError` raised by ``fn``, or the host unreachable). Every
    host gets a journal entry, like a deploy run (kind ``step``: run id, user, host, step,
    outcome, duration, and the confirmation if any), in the host's journal (``inv journal``) and
    the local one."""
    inv = inventory or load_inventory()
    targets = _targets(inv, hosts)
    rid = run_id or new_run_id()
    user = getpass.getuser()
    entries: dict[str, dict[str, Any]] = {}

    def one(s: Session) -> StepResult:
        started, t = time.time(), time.monotonic()
        error: OpsError | None = None
        value: Any = None
        ok, detail = False, ""
        try:
            value = fn(s)
            ok, detail = judge(value)
        except OpsError as exc:
            error = exc
        except Exception as exc:  # a bug in the step: journaled, then reported like elsewhere
            error = OpsError(f"{s.name}: step {name!r} raised {type(exc).__name__}: {exc}",
                             "this is a bug in the step's code")
        duration = time.monotonic() - t
        conf = confirmed.for_host(s.name) if confirmed is not None else None
        entry = _entry(rid, user, s.name, name, task, ok, detail, started, duration, error, conf)
        entries[s.name] = entry
        journaled = True
        try:
            s._raw.call("journal_append", {"host": s._raw.host_args(), "entry": entry})
        except OpsError:
            journaled = False  # the host went away mid-step: the local journal still has it
        if error is not None:
            raise error
        return StepResult(s.name, name, ok, detail, round(duration, 3), value, rid, journaled)

    outcomes = on_hosts(one, targets, inv, max_workers=max_workers)
    for host, o in outcomes.items():
        if host not in entries:  # never reached the step (unreachable)
            conf = confirmed.for_host(host) if confirmed is not None else None
            entries[host] = _entry(rid, user, host, name, task, False, "", time.time() - o.duration,
                                   o.duration, o.error, conf)
    append_local_journal([entries[h] for h in outcomes])
    return outcomes


# --- typed confirmation -------------------------------------------------------------------------


class ConfirmationRequired(UsageError):
    """A destructive step needs a typed confirmation, and there is no terminal to ask on (exit 2)."""


class NotConfirmed(OpsError):
    """The operator typed something else than the confirmation word: nothing was done (exit 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Confirmation:
    """Who confirmed what, on which hosts, and how (``typed`` at a terminal, or ``--yes``)."""

    action: str
    hosts: tuple[str, ...]
    word: str
    how: str  # "typed" | "--yes"
    user: str
    at: float
    run_id: str = ""

    def for_host(self, host: str) -> dict[str, Any] | None:
        """The journal's record of this confirmation, if it covers ``host``."""
        if host not in self.hosts:
            return None
        return {"action": self.action, "hosts": list(self.hosts), "word": self.word, "how": self.how,
                "user": self.user, "at": self.at}


def confirm(
    action: str,
    hosts: Sequence[str | Host],
    *,
    word: str | None = None,
    yes: bool = False,
    run_id: str | None = None,
    task: str | None = None,
    stdin: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> Confirmation:
    """Ask the operator to type the host name (several hosts: their names, comma-separated), or
    ``word``, before ``action`` on ``hosts``.

    ``yes=True`` (a task's ``--yes``) confirms without asking. Without a terminal on stdin and
    without ``yes``, it refuses (:class:`ConfirmationRequired`, exit 2): a script never confirms
    by accident. A wrong answer raises :class:`NotConfirmed` (exit 1). Every answer (who, what,
    which hosts, how, confirmed or not) is appended to the local journal; the steps that follow
    in :func:`run_step` carry the confirmation into each host's journal."""
    names = tuple(h.name if isinstance(h, Host) else str(h) for h in hosts)
    if not names:
        raise UsageError(f"confirm({action!r}): no host to confirm for")
    expected = word or ",".join(names)
    inp = stdin or sys.stdin
    err = stderr or sys.stderr
    user = getpass.getuser()
    rid = run_id or new_run_id()

    def record(confirmed: bool, how: str, typed: str | None = None) -> None:
        entry: dict[str, Any] = {
            "kind": "confirm", "run_id": rid, "user": user, "machine": socket.gethostname(),
            "hosts": list(names), "action": action, "word": expected, "how": how,
            "outcome": "confirmed" if confirmed else "refused", "started_at": time.time(),
        }
        if task:
            entry["task"] = task
        if typed is not None and not confirmed:
            entry["typed"] = typed[:100]
        append_local_journal([entry])

    if yes:
        record(True, "--yes")
        return Confirmation(action, names, expected, "--yes", user, time.time(), rid)
    try:
        tty = inp.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        record(False, "no terminal")
        raise ConfirmationRequired(
            f"{action} on {', '.join(names)} needs a typed confirmation, and there is no terminal to ask on",
            "run it at a terminal, or pass --yes to confirm without asking",
        )
    print(f"{action} on {', '.join(names)}.", file=err)
    print(f"Type {expected!r} to confirm: ", end="", file=err, flush=True)
    typed = inp.readline()
    if not typed:
        record(False, "typed", "")
        raise NotConfirmed(f"{action}: no answer (end of input): nothing done")
    typed = typed.strip()
    if typed != expected:
        record(False, "typed", typed)
        raise NotConfirmed(f"{action}: typed {typed!r}, not {expected!r}: nothing done")
    record(True, "typed")
    return Confirmation(action, names, expected, "typed", user, time.time(), rid)


# --- tasks --------------------------------------------------------------------------------------

HOST_HELP = "host name, comma list, group, or 'all' (default: the only host)"
JSON_HELP = "print JSON instead of a table"
YES_HELP = "confirm destructive steps without asking (needed without a terminal)"
_OWN_FLAGS = ("host", "json", "yes")


@dataclass
class TaskContext:
    """What a task written with :func:`task` receives instead of Invoke's context.

    ``host`` / ``json`` / ``yes`` are the task's flags. :meth:`each` runs a journaled step on the
    selected hosts and renders it; :meth:`confirm` asks before a destructive one; :meth:`session`
    opens one host. The task's exit code follows the steps' outcomes."""

    invoke: Any  # Invoke's Context (to run local commands: c.invoke.run(...))
    name: str
    host: str | None = None
    json: bool = False
    yes: bool = False
    run_id: str = field(default_factory=new_run_id)
    _inventory: Inventory | None = None
    _steps: list[dict[str, Any]] = field(default_factory=list)
    _codes: list[int] = field(default_factory=list)
    _confirmed: list[Confirmation] = field(default_factory=list)
    _reporter: Any = None

    @property
    def inventory(self) -> Inventory:
        """The inventory (``$OPS_INVENTORY`` or ./hosts.toml), loaded once."""
        if self._inventory is None:
            self._inventory = load_inventory()
        return self._inventory

    @property
    def hosts(self) -> list[Host]:
        """The hosts selected by ``--host`` (the only host when it was not given)."""
        return resolve_hosts(self.inventory, self.host)

    @property
    def reporter(self) -> Any:
        """The ``ops.report.Reporter`` of this task (table on a terminal, plain when piped, JSON)."""
        if self._reporter is None:
            from ops.report import Reporter, choose_format

            self._reporter = Reporter(choose_format(self.json))
        return self._reporter

    def line(self, text: str) -> None:
        """Print a line of text (not in --json mode, where stdout is the JSON document)."""
        self.reporter.line(text)

    def confirm(self, action: str, word: str | None = None,
                hosts: Sequence[str | Host] | None = None) -> Confirmation:
        """Ask the operator to type the host name(s) (or ``word``) before ``action`` on the
        selected hosts (or ``hosts``); ``--yes`` skips the question. Refusal ends the task (exit 2
        without a terminal, 1 on a wrong answer). Journaled, and carried into each host's journal
        entries of the following steps."""
        c = confirm(action, hosts if hosts is not None else self.hosts, word=word, yes=self.yes,
                    run_id=self.run_id, task=self.name)
        self._confirmed.append(c)
        return c

    def session(self, host: str | Host | None = None) -> Any:
        """A session on ``host``, or on the one selected host (a context manager)."""
        if host is None:
            targets = self.hosts
            if len(targets) != 1:
                raise UsageError(f"{self.name} works on one host; --host selects {len(targets)}",
                                 "pass --host NAME")
            host = targets[0]
        return session(host, self.inventory)

    def each(self, step: str, fn: Callable[[Session], Any], hosts: Sequence[str | Host] | None = None,
             render: bool = True) -> dict[str, HostOutcome[StepResult]]:
        """Run ``fn(session)`` as the journaled step ``step`` on the selected hosts (or ``hosts``)
        in parallel (see :func:`run_step`), render a row per host, and count its failures in the
        task's exit code. Returns the outcomes keyed by host name."""
        targets = self.hosts if hosts is None else _targets(self.inventory, hosts)
        conf = self._confirmation_for([h.name for h in targets])
        outcomes = run_step(step, fn, targets, self.inventory, run_id=self.run_id, task=self.name,
                            confirmed=conf)
        for o in outcomes.values():
            if o.error is not None:
                self._codes.append(o.error.exit_code)
            elif o.value is not None and not o.value.ok:
                self._codes.append(1)
            else:
                self._codes.append(0)
        self._steps.append({"step": step, "outcomes": list(outcomes.values())})
        if render and not self.json:
            from ops import report

            report.custom_step(self.reporter, step, list(outcomes.values()))
        return outcomes

    def _confirmation_for(self, hosts: list[str]) -> Confirmation | None:
        for c in reversed(self._confirmed):
            if any(h in c.hosts for h in hosts):
                return c
        return None

    def fail(self, message: str, advice: str | None = None) -> None:
        """End the task now with exit 1 and this message (and advice)."""
        raise ActionFailed(message, advice)

    def exit_code(self) -> int:
        """0 when every step passed on every host; the errors' code when every failure is one kind
        of error (3: all unreachable); else 1."""
        bad = [c for c in self._codes if c]
        if not bad:
            return 0
        return bad[0] if len(set(bad)) == 1 else 1

    def json_document(self) -> dict[str, Any]:
        """What ``--json`` prints at the end: the task, its run id and every step's outcomes."""
        steps = []
        for s in self._steps:
            hosts = {}
            for o in s["outcomes"]:
                if o.error is not None:
                    hosts[o.host] = {"ok": False, "error": o.error.message, "advice": o.error.advice,
                                     "exit_code": o.error.exit_code, "duration": round(o.duration, 3)}
                else:
                    v = o.value
                    hosts[o.host] = {"ok": v.ok, "detail": v.detail, "duration": v.duration,
                                     "value": to_json(v.value), "journaled": v.journaled}
            steps.append({"step": s["step"], "hosts": hosts})
        return {"task": self.name, "run_id": self.run_id, "ok": self.exit_code() == 0, "steps": steps}


def task(*args: Any, **kwargs: Any) -> Any:
    """Decorator: an Invoke task whose body receives a :class:`TaskContext` first.

    The task gains ``--host``, ``--json`` and ``--yes`` (don't declare them yourself); an
    :class:`OpsError` raised in it becomes one message on stderr (with its advice) and its exit
    code, Ctrl-C exit 130, never a traceback; its exit code follows the steps run with
    :meth:`TaskContext.each` (or 1 when the body returns ``False``). ``--json`` prints one JSON
    document at the end. Takes Invoke's ``@task`` options (``help``, ``name``, ``positional``,
    ``iterable``...); ``auto_shortflags`` is off (``-h`` stays help).

    Use as ``@api.task`` or ``@api.task(help={...})``."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return _make_task(args[0], {})
    if args:
        raise TypeError("api.task takes keyword options only (e.g. help={...})")
    return lambda fn: _make_task(fn, kwargs)


def _make_task(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    from invoke import Exit
    from invoke import task as invoke_task

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if not params:
        raise TypeError(f"task {fn.__name__}: the first parameter receives the TaskContext")
    clash = [p.name for p in params[1:] if p.name in _OWN_FLAGS]
    if clash:
        raise TypeError(f"task {fn.__name__}: parameter {clash[0]!r} is given by api.task (--{clash[0]})")
    own = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
           for n, d in (("host", None), ("json", False), ("yes", False))]
    user = [p.replace(annotation=inspect.Parameter.empty) for p in params[1:]]
    ctx_param = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # keyword-only parameters must follow the others
    plain = [p for p in user if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kwonly = [p for p in user if p.kind == p.KEYWORD_ONLY]
    task_name = options.get("name") or fn.__name__.replace("_", "-")

    @functools.wraps(fn)
    def body(c: Any, *a: Any, **kw: Any) -> Any:
        from ops.report import Reporter

        tctx = TaskContext(invoke=c, name=task_name, host=kw.pop("host", None),
                           json=bool(kw.pop("json", False)), yes=bool(kw.pop("yes", False)))
        try:
            returned = fn(tctx, *a, **kw)
        except OpsError as exc:
            if tctx.json:
                doc = tctx.json_document()
                doc.update(ok=False, error=exc.message, advice=exc.advice)
                tctx.reporter.json(doc)
            Reporter().error(exc)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        code = tctx.exit_code() or (1 if returned is False else 0)
        if tctx.json:
            doc = tctx.json_document()
            doc["ok"] = code == 0
            if returned is not None and returned is not False:
                doc["returned"] = to_json(returned)
            tctx.reporter.json(doc)
        if code:
            raise Exit(code=code)
        return returned

    body.__signature__ = inspect.Signature([ctx_param, *plain, *own, *kwonly])  # type: ignore[attr-defined]
    del body.__wrapped__  # invoke reads __signature__; inspect must not follow to fn
    helps = dict(options.pop("help", None) or {})
    for flag, text in (("host", HOST_HELP), ("json", JSON_HELP), ("yes", YES_HELP)):
        helps.setdefault(flag, text)
    options.setdefault("auto_shortflags", False)
    return invoke_task(body, help=helps, **options)
