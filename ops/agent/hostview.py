"""What every lifecycle phase on a host works from: the host's state store, checkout, secrets and
process table, the identity of what the tool recorded, and the ownership domain of a service
(ops/agent/ownership.py decides what is whose; this module only gathers the evidence for it).

Stdlib only, python3.8+. status.py, spawn.py and terminate.py build on it; lifecycle.py joins them.
"""

import os
import shlex
import time

from . import ownership, procs
from .gates import (
    tail_lines,
)
from .secrets import Secrets
from .state import StateStore, expand, read_json

POLL = 0.02  # gate and stop polling interval (s)
KILL_WAIT = 5.0  # how long to wait for SIGKILL to take effect
LOG_TAIL = 20
_SPAWNED = {}


class HostView:
    """One request's view of the host: shared by status, start and stop (and the checks)."""

    def __init__(self, host, emit=None, clock=time.monotonic, sleep=time.sleep):
        self.host = host
        self.store = StateStore(host["state_dir"])
        self.checkout = expand(host["path"])
        self.emit = emit or (lambda event: None)
        self.clock = clock
        self.sleep = sleep
        self.secrets = Secrets(self.checkout)
        # pid -> Popen of every service this agent process spawned (shared by all its requests), so
        # a service stopped by a later request of the same task is reaped, never left a zombie
        self.spawned = _SPAWNED
        self.protected = procs.self_and_ancestors()
        self._sup_log_offset = {}  # service -> size of its supervisor's log before this start
        # the marker's state directory, as the processes carry it (resolved: a symlinked home
        # must not make the same directory look like another one)
        self.state_root = os.path.realpath(self.store.root)
        self.probe_factory = ownership.Probe  # per-process evidence reader (tests inject a fake)
        self._probe_table = None  # the process table the current probe's reads belong to
        self._probe = None


    def reap(self):
        for pid, p in list(self.spawned.items()):
            if p.poll() is not None:
                del self.spawned[pid]


    def snapshot(self):
        self.reap()
        return procs.snapshot()


    def prepare(self, specs, all_specs):
        """Fill in what only the host knows: a service whose pattern is the default gets the
        pattern of its resolved command line (absolute paths, anchored at both ends)."""
        seen = set()
        for spec in list(specs) + list(all_specs.values()):
            if id(spec) in seen or not spec.get("match_default") or not spec.get("cmd"):
                continue
            seen.add(id(spec))
            try:
                argv = self.resolved_argv(spec)
            except ValueError:
                continue  # an unparsable cmd: start reports it
            path = (spec.get("env") or {}).get("PATH") or os.environ.get("PATH", "")
            spec["match"] = ownership.default_match(ownership.shown_argv(argv),
                                                    script=ownership.path_script(argv, path))


    def resolved_argv(self, spec):
        """The command the tool runs for a service: relative paths made absolute under its cwd."""
        return ownership.resolve_argv(shlex.split(spec["cmd"]), self.cwd_of(spec))


    def cwd_of(self, spec):
        return expand(spec.get("cwd") or self.checkout, self.checkout)


    def top_of(self, spec, all_specs):
        """The top-level service whose domain a service's processes belong to."""
        sup = spec.get("supervised_by")
        return all_specs.get(sup, spec) if sup else spec


    def domain(self, top, table, start_id=None, state=None):
        """What the top-level service `top` owns in this process table (see ownership.py)."""
        state = self.store.load(top["name"]) if state is None else state
        if state and state.get("corrupt"):
            state = {}
        return ownership.Domain(
            table,
            self.state_root,
            self.checkout,
            top["name"],
            state=state,
            supervisor_state=self.supervisor_state(state),
            protected=self.protected,
            probe=self.probe_of(table),
            start_id=start_id,
        )

    def probe_of(self, table):
        """One evidence reader per process table: the domains of several services judged on the
        same snapshot (status, a stop's sweep) read each process's marker and cwd once."""
        if self._probe_table is not table:
            self._probe_table, self._probe = table, self.probe_factory()
        return self._probe


    def matches(self, spec, table, all_specs=None):
        """(owned [Proc], foreign [(Proc, why)]): the processes matching spec's pattern that are
        provably its own (ownership.py), judged in the domain of its top-level service, and those
        that match but are not its own (never counted, never signalled: reported)."""
        dom = self.domain(self.top_of(spec, all_specs or {}), table)
        owned, foreign = dom.classify(spec["match"])
        return [p for p, _ in owned], foreign

    def owned_matches(self, spec, table, all_specs=None):
        """Only the owned side of ``matches``: what escaped an exact evidence (a cgroup, a tree)
        is still judged by user and checkout."""
        return self.matches(spec, table, all_specs)[0]


    def log_path(self, spec):
        return expand(spec["log"], self.checkout)


    def tail(self, spec, since=None, n=LOG_TAIL):
        """The last n lines of the service's log; with since=(offset, inode), only lines written
        after that position (the whole file if it was rotated since)."""
        path = self.log_path(spec)
        offset = None
        if since is not None:
            offset, inode = since
            try:
                if os.stat(path).st_ino != inode:
                    offset = 0
            except OSError:
                return []
        return [self.secrets.redact(ln) for ln in tail_lines(path, n, offset)]


    def remember_secrets(self, specs, all_specs):
        """Every secret of every service of the host is redacted from replies: a child inherits
        its supervisor's environment, and a token is a token whichever log it shows up in."""
        for spec in list(specs) + list(all_specs.values()):
            self.secrets.load_spec(spec)


    def live_pid(self, spec, state=None):
        """(pid or None, note). The recorded pid, only if it is still the same process."""
        unit = self.unit_spec(spec)
        if unit is not None:  # systemd's MainPID (its children hang under it)
            return self.units().main_pid(unit)
        state = self.store.load(spec["name"]) if state is None else state
        if not state or not state.get("pid"):
            return None, None
        ident = {k: state.get(k) for k in ("pid", "starttime", "boot_id")}
        if procs.same_process(ident):
            return state["pid"], None
        other = procs.get(state["pid"])
        if other is not None and other.alive:
            return None, "recorded pid %d now belongs to another process (pid reuse): %s" % (
                state["pid"],
                other.cmdline[:80],
            )
        return None, None


    def unit_spec(self, spec):
        """The spec if systemd runs this service (manager = "systemd", persist), else None."""
        from . import systemd

        return systemd.unit_spec(spec, self.store)


    def units(self):
        from . import systemd

        return systemd.Units(self)


    def supervisor_log(self, spec):
        """Where the tool's supervisor of a service writes its own lines."""
        path = spec.get("supervisor_log") or os.path.join(
            self.store.root, "logs", spec["name"] + ".supervisor.log")
        return expand(path, self.checkout)


    def supervisor_state(self, state):
        """What the tool's supervisor last wrote for a service it runs (None if not supervised)."""
        if not state or not state.get("supervisor_state"):
            return None
        return read_json(state["supervisor_state"])


    def note(self, name, kind, message):
        """A progress event inside a long step (spawned, gate passed, waiting on..., stopping), so
        the client can show what each service is doing while it waits."""
        message = self.secrets.redact(message)
        self.emit({"event": "progress", "service": name, "kind": kind, "message": message})


    def mark_quietly(self, name, **fields):
        """Record a state change; a failed write (a full disk) is returned, never raised: it
        must not abort the signals that stop a service."""
        try:
            self.store.mark(name, **fields)
            return None
        except OSError as exc:
            return "%s was not written to %s: %s" % (
                getattr(exc, "what", None) or "the state of %s" % name, exc.filename or self.store.root,
                exc.strerror or exc)

