"""Journaled custom steps and typed confirmation, for user-written steps (re-exported by
``ops.api``): a step on many hosts in parallel, its verdict, its journal entries (local and on
each host, like a deploy run), and ``confirm``.
"""

from __future__ import annotations

import getpass
import json as _json
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import IO, Any

from ops.errors import OpsError, UsageError
from ops.inventory import Host, Inventory
from ops.remote import Session, _targets, load_inventory, on_hosts
from ops.session import HostOutcome


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
