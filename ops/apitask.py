"""``@ops.api.task``: a user's Invoke task with the tool's conventions (``--host``, ``--json``,
``--yes``, error handling, exit codes, rendering, journaled steps). Re-exported by ``ops.api``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.errors import ActionFailed, OpsError, UsageError
from ops.inventory import Host, Inventory
from ops.remote import Session, _targets, load_inventory, resolve_hosts, session
from ops.session import HostOutcome
from ops.steps import Confirmation, StepResult, confirm, new_run_id, run_step, to_json

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
