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

This module is the stable surface: names not listed in ``__all__`` may change. They live in
``ops.remote`` (inventory, sessions, commands, files, built-ins), ``ops.steps`` (journaled steps,
confirmation) and ``ops.apitask`` (the task decorator); import them from here.
"""

from __future__ import annotations

from ops.apitask import HOST_HELP, JSON_HELP, YES_HELP, TaskContext, task
from ops.errors import OpsError, UsageError
from ops.inventory import Host, Inventory, Service
from ops.remote import Check, CommandFailed, Result, Session, load_inventory, on_hosts, resolve_hosts, session
from ops.session import HostOutcome
from ops.steps import (
    Confirmation,
    ConfirmationRequired,
    NotConfirmed,
    StepResult,
    append_local_journal,
    confirm,
    judge,
    new_run_id,
    run_step,
    to_json,
)

__all__ = [
    "HOST_HELP",  # the help texts of the flags @task adds, for tasks that want to reuse them
    "JSON_HELP",
    "YES_HELP",
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
    "append_local_journal",
    "confirm",
    "judge",
    "load_inventory",
    "new_run_id",
    "on_hosts",
    "resolve_hosts",
    "run_step",
    "session",
    "task",
    "to_json",
]
