"""Start, stop and status of services, run on the host in one agent call per phase.

Identity: a process the tool started is pid + start time + boot id (procs.identity); a pid whose
start time or boot id differs is someone else's and is never signalled.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

from . import hostlock, ownership, procs, supview
from .gates import (
    LogMatcher,
    LogWatch,
    child_gate,
    describe_pids,
    health_checks,
    health_label,
    http_check,
    port_gate,
    run_health_checks,
    tail_lines,
    tree_pids,
)
from .secrets import Secrets
from .state import StateStore, expand, read_json, write_json_atomic

POLL = 0.02  # gate and stop polling interval (s)
KILL_WAIT = 5.0  # how long to wait for SIGKILL to take effect
LOG_TAIL = 20
SETTLE = 1.0  # a service without gates must stay up this long to count as started
WAIT_NOTE = 2.0  # while gates are pending, a "waiting on ..." progress event this often (s)
_SPAWNED = {}


def _signum(name):
    return getattr(signal, "SIG" + name)


def _default_signals():
    """In the child before exec: the agent ignores SIGHUP (its SSH session may go away) and
    ignored signals survive exec; a service must get the default (stop_signal = "HUP" works).
    Popen's restore_signals already resets SIGPIPE/SIGXFSZ. The agent has no threads."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Lifecycle:
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

    # --- helpers ---------------------------------------------------------------------------

    def _reap(self):
        for pid, p in list(self.spawned.items()):
            if p.poll() is not None:
                del self.spawned[pid]

    def _snapshot(self):
        self._reap()
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
                spec["match"] = ownership.default_match(self.resolved_argv(spec))
            except ValueError:
                pass  # an unparsable cmd: start reports it

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
            probe=self.probe_factory(),
            start_id=start_id,
        )

    def owned_matches(self, spec, table, all_specs=None):
        """The processes matching spec's pattern that are provably its own (ownership.py): what
        escaped an exact evidence (a cgroup, a tree) is still judged by user and checkout."""
        dom = self.domain(self.top_of(spec, all_specs or {}), table)
        return [p for p, _ in dom.classify(spec["match"])[0]]

    def _log_path(self, spec):
        return expand(spec["log"], self.checkout)

    def _tail(self, spec, since=None, n=LOG_TAIL):
        """The last n lines of the service's log; with since=(offset, inode), only lines written
        after that position (the whole file if it was rotated since)."""
        path = self._log_path(spec)
        offset = None
        if since is not None:
            offset, inode = since
            try:
                if os.stat(path).st_ino != inode:
                    offset = 0
            except OSError:
                return []
        return [self.secrets.redact(ln) for ln in tail_lines(path, n, offset)]

    def _remember_secrets(self, specs, all_specs):
        """Every secret of every service of the host is redacted from replies: a child inherits
        its supervisor's environment, and a token is a token whichever log it shows up in."""
        for spec in list(specs) + list(all_specs.values()):
            self.secrets.load_spec(spec)

    def live_pid(self, spec, state=None):
        """(pid or None, note). The recorded pid, only if it is still the same process."""
        unit = self._unit_spec(spec)
        if unit is not None:  # systemd's MainPID (its children hang under it)
            return self._units().main_pid(unit)
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

    # --- systemd units: ops/agent/systemd.py ----------------------------------------------

    def _unit_spec(self, spec):
        """The spec if systemd runs this service (manager = "systemd", persist), else None."""
        from . import systemd

        return systemd.unit_spec(spec, self.store)

    def _units(self):
        from . import systemd

        return systemd.Units(self)

    # --- status ----------------------------------------------------------------------------

    def status(self, specs, all_specs, health=True):
        self.prepare(specs, all_specs)
        self._remember_secrets(specs, all_specs)
        table = self._snapshot()
        domains = {}
        out = []
        for spec in specs:
            top = self.top_of(spec, all_specs)
            if top["name"] not in domains:
                domains[top["name"]] = self.domain(top, table)
            out.append(self.secrets.redact_obj(
                self._status_one(spec, all_specs, table, health, domains[top["name"]])))
        return out

    def _status_one(self, spec, all_specs, table, health, dom):
        unit = self._unit_spec(spec)
        if unit is not None:
            return self._units().status_one(unit, table, health)
        name = spec["name"]
        out = {
            "name": name,
            "state": "stopped",
            "pid": None,
            "uptime": None,
            "port": spec["port"],
            "port_holders": [],
            "port_ok": None,
            "health": None,
            "detail": "",
            "supervised_by": spec.get("supervised_by"),
        }
        owner_root = None
        if spec.get("supervised_by"):
            sup = all_specs[spec["supervised_by"]]
            sup_pid, _ = self.live_pid(sup)
            if sup_pid is not None:
                ok, detail, pids = child_gate(table, sup_pid, spec["match"])
                if ok:
                    out.update(state="running", pid=pids[0])
                    owner_root = sup_pid
                else:
                    out.update(
                        state="dead",
                        detail="supervisor %s (pid %d) runs, but %s" % (sup["name"], sup_pid, detail),
                    )
            else:
                out["detail"] = "supervisor %s is not running" % sup["name"]
        else:
            state = self.store.load(name)
            pid, note = self.live_pid(spec, state)
            sup = self.supervisor_state(state)
            if sup is not None:
                out.update(supervisor_pid=pid, restarts=sup.get("restarts"), last_exit=sup.get("last_exit"),
                           last_reason=sup.get("last_reason"), supervisor=sup.get("state"))
                out.update(supview.status_fields(sup))
            if pid is not None and sup is not None:
                owner_root = pid
                child = sup.get("child_pid")
                if sup.get("state") == "running" and child and child in table and table[child].alive:
                    out.update(state="running", pid=child)
                elif sup.get("state") == "backoff":
                    wait = max(0.0, (sup.get("next_try") or time.time()) - time.time())
                    out.update(state="backoff", detail="next try in %.0fs (restarts %d, last: %s)" % (
                        wait, sup.get("restarts") or 0, sup.get("last_reason")))
                else:
                    out.update(state="running", pid=child or pid)
            elif sup is not None and sup.get("state") == "fatal":  # until `start` resets it
                out.update(state="fatal", detail=supview.fatal_detail(sup, name))
            elif sup is not None and sup.get("state") == "done" and not state.get("stopped"):
                out.update(state="stopped", detail="finished (exit 0)")
            elif pid is not None:
                out.update(state="running", pid=pid)
                owner_root = pid
            elif state and state.get("corrupt"):
                out.update(state="unknown", detail="state file is corrupt")
            elif state and state.get("pid") and not state.get("stopped"):
                out.update(
                    state="dead",
                    detail=note
                    or "pid %d is gone; last log: %s" % (state["pid"], " | ".join(self._tail(spec, n=1))),
                )
            elif note:
                out["detail"] = note
            if pid is not None and state.get("gating"):
                # never "running and healthy" before its start has seen its gates pass
                if hostlock.is_locked(self.state_root):
                    out.update(state="starting", detail="its start is still waiting for its gates")
                else:
                    out.update(state="unknown", detail=(
                        "its last start ended before its gates passed (the agent went away); "
                        "`restart %s` to check it" % name))
            failed_writes = supview.write_error_note(sup)
            if failed_writes:
                out["detail"] = (out["detail"] + "; " if out["detail"] else "") + failed_writes
        if out["pid"] is not None:
            p = table.get(out["pid"])
            if p is not None:
                out["uptime"] = max(0.0, time.time() - p.start_epoch)
        # what the service owns outside the live tree: a copy the tool did not start from this
        # checkout, members of its group whose leader died, marked processes re-parented to init
        legit = tree_pids(table, owner_root) if owner_root is not None else set()
        owned, foreign = dom.classify(spec["match"])
        strays = {p.pid for p, _ in owned if p.pid not in legit}
        if not spec.get("supervised_by"):
            strays |= {pid for pid in dom.members if pid not in legit}
        if strays and out["state"] != "running":
            out["state"] = "unknown" if out["state"] == "stopped" else out["state"]
            out["detail"] = (out["detail"] + "; " if out["detail"] else "") + (
                "not started by this tool, or escaped its tree, but running: %s"
                % describe_pids(table, strays)
            )
        out["strays"] = sorted(strays)
        note = ownership.foreign_note(table, foreign, spec["name"])
        if note:
            out["foreign"] = [{"pid": p.pid, "cmd": p.cmdline[:100], "why": why} for p, why in foreign]
            out["detail"] = (out["detail"] + "; " if out["detail"] else "") + note
        if spec["port"]:
            holders = procs.listening_pids(spec["port"])
            mine = tree_pids(table, owner_root) if owner_root else set()
            out["port_holders"] = [
                {"pid": h, "cmd": (table[h].cmdline[:80] if h in table else "?"), "own": h in mine}
                for h in sorted(holders)
            ]
            out["port_ok"] = bool(holders & mine)
        if health and health_checks(spec) and out["state"] == "running":
            t = time.monotonic()
            own = tree_pids(table, owner_root) if owner_root is not None else set()
            ok, detail, results = run_health_checks(health_checks(spec), self.secrets, owner_pids=own,
                                                    table=table)
            out["health"] = {
                "ok": ok,
                "detail": self.secrets.redact(detail),
                "ms": round((time.monotonic() - t) * 1000, 1),
                "checks": results,
            }
        return out

    # --- start -----------------------------------------------------------------------------

    def start(self, specs, all_specs):
        self.prepare(specs, all_specs)
        self._remember_secrets(specs, all_specs)
        results = []
        failed = None
        for spec in specs:
            if failed:
                results.append(
                    {"name": spec["name"], "outcome": "skipped", "detail": "not started: %s failed" % failed}
                )
                continue
            unit = self._unit_spec(spec)
            if unit is not None:
                r = self._units().start_one(unit, [all_specs[c] for c in spec.get("children") or []])
            elif spec.get("supervised_by"):
                r = self._check_supervised(spec, all_specs[spec["supervised_by"]])
            else:
                r = self.start_one(spec, [all_specs[c] for c in spec.get("children") or []])
            r = self.secrets.redact_obj(r)
            self.emit({"event": "service", "phase": "start", "result": r})
            results.append(r)
            if r["outcome"] == "failed":
                failed = spec["name"]
        return {"ok": failed is None, "services": results}

    def _check_supervised(self, spec, sup):
        sup_pid, _ = self.live_pid(sup)
        if sup_pid is None:
            return {
                "name": spec["name"],
                "outcome": "failed",
                "detail": "its supervisor %s is not running; start %s" % (sup["name"], sup["name"]),
            }
        ok, detail, pids = child_gate(self._snapshot(), sup_pid, spec["match"])
        return {
            "name": spec["name"],
            "outcome": "supervised" if ok else "failed",
            "pid": pids[0] if pids else None,
            "detail": ("started by %s: " % sup["name"]) + detail,
        }

    def _note(self, name, kind, message):
        """A progress event inside a long step (spawned, gate passed, waiting on..., stopping), so
        the client can show what each service is doing while it waits."""
        message = self.secrets.redact(message)
        self.emit({"event": "progress", "service": name, "kind": kind, "message": message})

    def _result(self, spec, outcome, **kw):
        r = {"name": spec["name"], "outcome": outcome, "pid": None, "gates": [], "detail": ""}
        r.update(kw)
        return r

    def start_one(self, spec, children):
        name = spec["name"]
        t_start = time.time()
        m_start = self.clock()
        state = self.store.load(name)
        pid, _note = self.live_pid(spec, state)
        if pid is not None:
            table = self._snapshot()
            gates = self._instant_gates(spec, children, pid, table)
            bad = [g for g in gates if not g["ok"]]
            if not bad:
                return self._result(
                    spec,
                    "already-running",
                    pid=pid,
                    gates=gates,
                    detail="already running and healthy (pid %d); nothing to do" % pid,
                )
            return self._result(
                spec,
                "failed",
                pid=pid,
                gates=gates,
                detail=(
                    "already running (pid %d) but not healthy: %s; use `restart`" % (pid, bad[0]["detail"])
                ),
            )

        # Pre-flight: no second copy of what this service owns, no port held by anyone. A copy
        # that only matches the pattern (another checkout, another user) is not ours: ignored.
        table = self._snapshot()
        dom = self.domain(spec, table, state=state)
        left = sorted(dom.members)
        if left:
            return self._result(
                spec,
                "failed",
                detail=(
                    "%s is still running from an earlier start (%s): %s; stop it first (`stop %s`)"
                    % (name, ", ".join(sorted(set(dom.members.values()))), describe_pids(table, left), name)
                ),
            )
        for s in [spec] + list(children):
            running = [p for p, _ in dom.classify(s["match"])[0]]
            if running:
                return self._result(
                    spec,
                    "failed",
                    detail=(
                        "%s is already running outside this tool's control: %s; stop it first "
                        "(`stop %s` sweeps it)"
                        % (s["name"], describe_pids(table, [p.pid for p in running]), name)
                    ),
                )
            if s.get("port"):
                holders = procs.listening_pids(s["port"])
                if holders or procs.port_listening(s["port"]):
                    return self._result(
                        spec,
                        "failed",
                        detail=(
                            "port %d (%s) is already held by %s, which is not %s; find it with "
                            "`lsof -i :%d` or `ss -ltnp 'sport = :%d'`"
                            % (
                                s["port"],
                                s["name"],
                                describe_pids(table, holders),
                                s["name"],
                                s["port"],
                                s["port"],
                            )
                        ),
                    )

        missing = missing_checkout(self.checkout, expand(spec.get("cwd") or self.checkout, self.checkout))
        if missing:  # before env_file: "cannot read .../checkout/x.env" hides the real cause
            return self._result(spec, "failed", detail=missing)
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("OPS_AGENT"):
                del env[k]
        env.update(spec.get("env") or {})
        if spec.get("env_file"):
            extra, err = self.secrets.env_file(spec["env_file"])
            if err:
                return self._result(spec, "failed", detail=err)
            env.update(extra)
        # the ownership marker: inherited by everything the service spawns (ownership.py)
        start_id = "%x.%x" % (int(t_start * 1000), os.getpid())
        env[ownership.MARKER] = ownership.marker_value(self.state_root, name, start_id)
        cwd = self.cwd_of(spec)
        try:
            argv = self.resolved_argv(spec)
        except ValueError as exc:
            return self._result(spec, "failed", detail="cannot parse cmd: %s" % exc)
        if not argv:
            return self._result(spec, "failed", detail="cmd is empty")
        log_path = self._log_path(spec)
        try:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            # Before spawning: a state file that cannot be written would leave an untracked process.
            self.store.mark(name, stopped=True, last_start="starting")
        except OSError as exc:
            return self._result(
                spec, "failed", detail="cannot write on the host: %s: %s" % (exc.filename, exc.strerror)
            )
        # Log positions are taken BEFORE the spawn: only lines written after them count.
        watches = {name: LogWatch(log_path)}
        for c in children:
            if (c.get("ready") or {}).get("log"):
                watches[c["name"]] = LogWatch(self._log_path(c))
        supervised = None
        if (spec.get("restart") or {}).get("policy", "no") != "no":
            try:
                argv, supervised = self._supervisor_argv(spec, argv, cwd)
            except (OSError, ValueError) as exc:
                for w in watches.values():
                    w.close()
                return self._result(spec, "failed", detail="cannot set up its supervisor: %s" % exc)
        try:
            return self._spawn_and_gate(spec, children, argv, cwd, env, watches, t_start, m_start,
                                        supervised, start_id)
        finally:
            for w in watches.values():
                w.close()

    def _supervisor_argv(self, spec, argv, cwd):
        """The command line of the tool's own supervisor (supervisor.py) for this service, and
        the path of the state file it keeps. The supervisor runs from the agent's zipapp."""
        archive = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".pyz") else None
        if archive is None or not os.path.isfile(archive):
            raise ValueError("the agent is not running from its zipapp")
        name = spec["name"]
        heartbeat = spec.get("heartbeat")
        if heartbeat:
            heartbeat = dict(heartbeat, file=expand(heartbeat["file"], self.checkout))
        state_path = os.path.join(self.store.root, "services", name + ".supervisor.json")
        sup_spec = {
            "name": name, "argv": argv, "cwd": cwd, "state_path": state_path,
            "restart": spec["restart"], "heartbeat": heartbeat, "match": spec["match"],
            "max_instances": spec.get("max_instances"), "stop_timeout": spec["stop_timeout"],
            "stop_signal": spec.get("stop_signal", "TERM"),
            "state_root": self.state_root, "checkout": self.checkout,
            "port": spec.get("port"),  # spawns wait while anyone holds it
            # its own lines go here, never into the service's log (which the log gate reads)
            "supervisor_log": self.supervisor_log(spec),
        }
        self._sup_log_offset[name] = supview.log_size(sup_spec["supervisor_log"])
        spec_path = os.path.join(self.store.root, "services", name + ".supervise.json")
        write_json_atomic(spec_path, sup_spec)
        try:
            os.unlink(state_path)  # a fresh supervisor: a fatal breaker is reset by start
        except FileNotFoundError:
            pass
        return [sys.executable, archive, "supervise", spec_path], state_path

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

    def _spawn_and_gate(self, spec, children, argv, cwd, env, watches, t_start, m_start, supervised=None,
                        start_id=None):
        name = spec["name"]
        log_path = self._log_path(spec)
        position = (watches[name].offset, watches[name].inode)
        try:
            logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            return self._result(spec, "failed", detail="cannot open log %s: %s" % (log_path, exc.strerror))
        try:
            if position[1] is None:  # the log is new: all of it is this start's
                position = (0, os.fstat(logfd).st_ino)
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_default_signals,
            )
        except OSError as exc:
            return self._result(spec, "failed", detail="cannot run %s: %s" % (argv[0], exc.strerror or exc))
        finally:
            os.close(logfd)
        self.spawned[proc.pid] = proc
        ident = procs.identity(proc.pid) or {"pid": proc.pid, "starttime": None, "boot_id": None}
        self.store.save(
            name,
            {
                "name": name,
                "pid": proc.pid,
                "starttime": ident["starttime"],
                "boot_id": ident["boot_id"],
                "pgid": proc.pid,
                "started_at": t_start,
                "cmd": spec["cmd"],
                "log": log_path,
                "log_offset": position[0],
                "log_inode": position[1],
                "stopped": False,
                "supervisor_state": supervised,
                "start_id": start_id,
                "gating": True,
            },
        )
        self._note(name, "spawned", "spawned pid %d" % proc.pid)

        gates = self._gate_list(spec, children, proc.pid, t_start, watches)
        timeout = max([spec["ready"]["timeout"]] + [c["ready"]["timeout"] for c in children])
        deadline = m_start + timeout
        passed = []
        note_at = [m_start + WAIT_NOTE]

        def fail(gate, detail, exit_code=None):
            return self._failed_start(spec, children, proc, ident["starttime"], start_id, position,
                                      passed, gate, detail, exit_code=exit_code)

        while True:
            rc = proc.poll()
            if rc is not None:
                self.spawned.pop(proc.pid, None)
                pending = gates[0]["name"] if gates else "process"
                ended = supervised and supview.ended_during_start(read_json(supervised), name, pending)
                if ended:  # the service's own exit codes, not its supervisor's exit 0
                    return fail(pending, ended[0], exit_code=ended[1])
                return fail(pending, "the process exited with code %d before %s passed" % (rc, pending),
                            exit_code=rc)
            # the process table is read only when a pending gate looks at it (not for a log gate)
            table = self._snapshot() if any(g["table"] for g in gates) else {}
            for g in list(gates):
                ok, detail = g["check"](table)
                g["detail"] = detail
                if ok:
                    gates.remove(g)
                    passed.append(
                        {
                            "name": g["name"],
                            "ok": True,
                            "detail": detail,
                            "elapsed": round(self.clock() - m_start, 3),
                        }
                    )
                    self._note(name, "gate", "gate %s passed after %.2fs"
                               % (g["name"], passed[-1]["elapsed"]))
            if not gates:
                self._mark_quietly(name, gating=False)
                return self._result(
                    spec,
                    "started",
                    pid=proc.pid,
                    gates=passed,
                    elapsed=round(self.clock() - m_start, 3),
                    detail="started pid %d" % proc.pid,
                )
            if self.clock() >= deadline:
                g = gates[0]
                return fail(g["name"], "timed out after %.1fs: %s" % (self.clock() - m_start, g["detail"]))
            if self.clock() >= note_at[0]:
                note_at[0] = self.clock() + WAIT_NOTE
                g = gates[0]
                self._note(name, "waiting", "waiting on gate %s for %.0fs (timeout %gs): %s"
                           % (g["name"], self.clock() - m_start, timeout, g["detail"]))
            self.sleep(POLL)

    def _gate_list(self, spec, children, pid, t_start, watches):
        gates = []

        def log_gate(watch, pattern):
            matcher = LogMatcher(watch, pattern)

            def check(_table):
                line, last = matcher.check()
                if line is not None:
                    return True, "log line matched: %s" % self.secrets.redact(line.strip())[:120]
                return False, "no line matching /%s/ written to %s since this start%s" % (
                    pattern,
                    watch.path,
                    " (last: %s)" % self.secrets.redact(last.strip())[:100] if last else "",
                )

            return check

        def port_check(port):
            def check(table):
                return port_gate(table, port, tree_pids(table, pid, since_epoch=t_start))

            return check

        def health_check(health):
            def check(table):
                own = tree_pids(table, pid, since_epoch=t_start)
                ok, detail, _ = http_check(health, self.secrets, timeout=1.0, owner_pids=own, table=table)
                return ok, self.secrets.redact(detail)

            return check

        def under_parent(pattern):
            def check(table):
                ok, detail, _ = child_gate(table, pid, pattern, since_epoch=t_start)
                return ok, detail

            return check

        for s in [spec] + list(children):
            prefix = "" if s is spec else s["name"] + ": "
            ready = s.get("ready") or {}
            if s is not spec:
                gates.append({"name": prefix + "child", "check": under_parent(s["match"]), "table": True})
            if ready.get("log"):
                gates.append(
                    {
                        "name": prefix + "log",
                        "check": log_gate(watches[s["name"]], ready["log"]),
                        "table": False,
                    }
                )
            if ready.get("port") and s.get("port"):
                gates.append({"name": prefix + "port", "check": port_check(s["port"]), "table": True})
            if ready.get("health"):
                for h in health_checks(s, gating=True):
                    gates.append({"name": prefix + health_label(h), "check": health_check(h), "table": True})
        if not gates:
            # no declared evidence: at least it must not die at once
            born = self.clock()

            def alive(_table):
                up = self.clock() - born
                if up >= SETTLE:
                    return True, "still running %.1fs after the spawn (no gates declared)" % up
                return False, "running for %.1fs so far" % up

            gates.append({"name": "alive", "check": alive, "table": False})
        return gates

    def _instant_gates(self, spec, children, pid, table):
        """The checks that need no waiting, for a service that is already running."""
        out = []
        for s in [spec] + list(children):
            prefix = "" if s is spec else s["name"] + ": "
            if s is not spec:
                ok, detail, _ = child_gate(table, pid, s["match"])
                out.append({"name": prefix + "child", "ok": ok, "detail": detail})
            if s.get("port") and (s.get("ready") or {}).get("port"):
                ok, detail = port_gate(table, s["port"], tree_pids(table, pid))
                out.append({"name": prefix + "port", "ok": ok, "detail": detail})
            for h in health_checks(s, gating=True):
                ok, detail, _ = http_check(h, self.secrets, owner_pids=tree_pids(table, pid), table=table)
                out.append({"name": prefix + health_label(h), "ok": ok,
                            "detail": self.secrets.redact(detail)})
        return out

    def _failed_start(
        self, spec, children, proc, starttime, start_id, position, passed, gate, detail, exit_code=None
    ):
        """Leave nothing half-started: kill the group, its tree and everything this start spawned
        (the processes carrying this start's marker); never another start's processes.

        exit_code is the service's own exit code when it exited by itself; not when we killed it."""
        table = self._snapshot()
        if starttime is None and proc.returncode is None and proc.pid in table:
            # its identity could not be read at the spawn; it is our child, not reaped yet, so
            # the pid is still its own
            starttime = table[proc.pid].starttime
        record = {"pid": proc.pid, "starttime": starttime, "pgid": proc.pid, "boot_id": procs.boot_id()}
        cleanup = self._terminate(spec, record, timeout=min(spec["stop_timeout"], 5.0), start_id=start_id)
        self._reap()
        if cleanup["alive"]:
            detail += "; still alive after SIGKILL: %s" % describe_pids(self._snapshot(), cleanup["alive"])
        self._mark_quietly(
            spec["name"], stopped=True, last_start="failed", stopped_at=time.time(), exit_code=exit_code,
            gating=False,
        )
        extra = {}
        if spec["name"] in self._sup_log_offset:  # the supervisor's own words, beside the service's
            extra["supervisor_log_tail"] = [self.secrets.redact(ln) for ln in tail_lines(
                self.supervisor_log(spec), LOG_TAIL, self._sup_log_offset[spec["name"]])]
        return self._result(
            spec,
            "failed",
            pid=proc.pid,
            **extra,
            gates=passed + [{"name": gate, "ok": False, "detail": detail}],
            failed_gate=gate,
            detail=detail,
            exit_code=exit_code,
            log_tail=self._tail(spec, since=position),
            child_log_tails=self._child_tails(spec, children, gate),
            cleanup=cleanup,
        )

    def _child_tails(self, spec, children, gate):
        """The log of the child whose gate failed, when it is not the supervisor's own log."""
        out = {}
        for c in children:
            if gate.startswith(c["name"] + ":") and self._log_path(c) != self._log_path(spec):
                out[c["name"]] = self._tail(c, n=LOG_TAIL)
        return out

    # --- stop ------------------------------------------------------------------------------

    def stop(self, specs, all_specs):
        self.prepare(specs, all_specs)
        self._remember_secrets(specs, all_specs)
        results = []
        for spec in specs:
            unit = self._unit_spec(spec)
            if unit is not None:
                r = self._units().stop_one(unit, [all_specs[c] for c in spec.get("children") or []])
            elif spec.get("supervised_by"):
                r = self._verify_child_stopped(spec, all_specs)
            else:
                r = self.stop_one(spec, [all_specs[c] for c in spec.get("children") or []])
            r = self.secrets.redact_obj(r)
            self.emit({"event": "service", "phase": "stop", "result": r})
            results.append(r)
        ok = all(r["outcome"] != "failed" and not r.get("state_error") for r in results)
        return {"ok": ok, "services": results}

    def _mark_quietly(self, name, **fields):
        """Record a state change; a failed write (a full disk) is returned, never raised: it
        must not abort the signals that stop a service."""
        try:
            self.store.mark(name, **fields)
            return None
        except OSError as exc:
            return "%s was not written to %s: %s" % (
                getattr(exc, "what", None) or "the state of %s" % name, exc.filename or self.store.root,
                exc.strerror or exc)

    def _verify_child_stopped(self, spec, all_specs):
        sup = all_specs[spec["supervised_by"]]
        sup_pid, _ = self.live_pid(sup)
        table = self._snapshot()
        if sup_pid is not None:
            return {
                "name": spec["name"],
                "outcome": "failed",
                "detail": (
                    "it is run by %s (pid %d), which would restart it; stop %s instead"
                    % (sup["name"], sup_pid, sup["name"])
                ),
            }
        dom = self.domain(sup, table)
        owned, _ = dom.classify(spec["match"])
        if owned:
            # the supervisor is gone: these are orphans; sweep them like the supervisor's stop does
            swept = self._sweep(sup, [spec], spec["stop_timeout"])
            return dict(swept, name=spec["name"])
        port_left = procs.listening_pids(spec["port"]) if spec.get("port") else set()
        if port_left:
            return {
                "name": spec["name"],
                "outcome": "failed",
                "detail": "port %d still held by %s" % (spec["port"], describe_pids(table, port_left)),
            }
        return {"name": spec["name"], "outcome": "stopped", "detail": "stopped with %s" % sup["name"]}

    def stop_one(self, spec, children):
        name = spec["name"]
        state = self.store.load(name) or {}
        if state.get("corrupt"):
            state = {}
        pid, note = self.live_pid(spec, state)
        signalled, escalated = [], False
        if pid is not None and state.get("supervisor_state"):
            # its SIGTERM handler sets a flag; it then stops the child (TERM, wait, KILL) and exits
            sup = {pid: state.get("starttime")}
            self._note(name, "stopping", "stopping the supervisor pid %d (SIGTERM; it stops its child)" % pid)
            self._signal([], sup, signal.SIGTERM)
            signalled = [pid]
            self._wait_gone(sup, spec["stop_timeout"] + KILL_WAIT + 1.0)
        # everything the service owns, found by identity: the recorded process, its group (also
        # when its leader died), its tree, and processes carrying its marker
        if pid is not None:
            self._note(name, "stopping", "stopping pid %d: SIG%s, then SIGKILL after %gs"
                       % (pid, spec.get("stop_signal", "TERM"), spec["stop_timeout"]))
        term = self._terminate(
            spec, state, timeout=spec["stop_timeout"], signame=spec.get("stop_signal", "TERM")
        )
        signalled, escalated = sorted(set(signalled) | set(term["signalled"])), term["escalated"]
        if term["alive"]:
            return {
                "name": name,
                "outcome": "failed",
                "pid": pid,
                "signalled": signalled,
                "escalated": True,
                "detail": "still alive after SIGKILL: %s" % describe_pids(self._snapshot(), term["alive"]),
            }
        warnings = []
        if note and pid is None:
            w = self._mark_quietly(name, stale=True, stale_note=note)
            if w:
                warnings.append(w)
        # then what escaped identity but is provably its own (pattern + user + checkout)
        swept = self._sweep(spec, children, spec["stop_timeout"])
        w = self._mark_quietly(name, stopped=True, stopped_at=time.time(), stopped_by="user", gating=False)
        if w:
            warnings.append(w)
        if swept["outcome"] == "failed":
            return dict(swept, signalled=signalled, escalated=escalated, pid=pid, warnings=warnings)
        orphans = term["orphans"] + [o for o in swept["orphans"] if o["pid"] not in term["signalled"]]
        if pid is None and not orphans and not term["signalled"]:
            detail = "was not running" + ("; " + note + " (not signalled)" if note else "")
            outcome = "not-running"
        else:
            if pid is not None:
                detail = "stopped pid %d" % pid
            else:
                detail = "pid %s was gone" % (state.get("pid") or "?")
            if escalated:
                detail += " (escalated to SIGKILL)"
            if orphans:
                detail += "; killed %d orphan(s): %s" % (
                    len(orphans), ", ".join("%d" % o["pid"] for o in orphans))
            outcome = "stopped"
        if swept.get("foreign_note"):
            detail += "; " + swept["foreign_note"]
        if warnings:
            detail += "; WARNING: " + "; ".join(warnings)
        return {
            "name": name,
            "outcome": outcome,
            "pid": pid,
            "signalled": signalled,
            "escalated": escalated,
            "orphans": orphans,
            "foreign": swept.get("foreign", []),
            "detail": detail,
            "note": note,
            "warnings": warnings,
            "state_error": "; ".join(warnings) or None,
        }

    def _targets(self, table, name, state, start_id=None):
        """({pid: starttime}, [group ids]) of what a service owns by identity right now (ownership.py):
        the recorded process and its tree, the group created for it (also when its leader died),
        the supervisor's child and its group, and what carries its marker (of one start only, when
        start_id is given). A pid whose start time differs is never a target, nor is a group whose id
        now belongs to another process."""
        dom = ownership.Domain(
            table,
            self.state_root,
            self.checkout,
            name,
            state=state,
            supervisor_state=self.supervisor_state(state),
            protected=self.protected,
            probe=self.probe_factory(),
            start_id=start_id,
        )
        return {pid: table[pid].starttime for pid in dom.members}, dom.groups

    def _terminate(self, spec, state, timeout, signame="TERM", start_id=None):
        """Signal the group(s) and the tree, wait, then KILL what is left (and whatever the group or
        tree gained meanwhile, e.g. a child respawned by a dying supervisor)."""
        name = spec["name"]
        table = self._snapshot()
        targets, groups = self._targets(table, name, state, start_id)
        # what escaped the tree of the live recorded process: orphans (its leader died, or they
        # were re-parented), found by their group or their marker
        root = state.get("pid") if state else None
        in_tree = {root} | {d.pid for d in procs.descendants(table, root)} if root in targets else set()
        orphans = [{"pid": p, "cmd": table[p].cmdline[:100]} for p in sorted(targets) if p not in in_tree]
        signalled = set(targets)
        self._signal(groups, targets, _signum(signame))
        alive = self._wait_gone(targets, timeout)
        left = {p: targets[p] for p in alive}
        more, more_groups = self._targets(self._snapshot(), name, state, start_id)
        left.update(more)
        escalated = bool(left)
        if left:
            signalled |= set(left)
            self._signal(sorted(set(groups) | set(more_groups)), left, signal.SIGKILL)
            alive = self._wait_gone(left, KILL_WAIT)
        return {"signalled": sorted(signalled), "escalated": escalated, "alive": alive, "orphans": orphans}

    def _signal(self, groups, targets, signum):
        """Signal each target that is still the same process (pid + start time); each group too,
        but only while one of the targets is in it (so the group id cannot have been reused)."""
        live = {}
        for tpid, starttime in targets.items():
            p = procs.get(tpid)
            if p is not None and p.alive and p.starttime == starttime:
                live[tpid] = p.pgid
        sent = set()
        for pgid in groups or ():
            if pgid and pgid in live.values():
                try:
                    os.killpg(pgid, signum)
                    sent.add(pgid)
                except (ProcessLookupError, PermissionError):
                    pass
        for tpid, tpgid in live.items():
            if tpgid in sent:
                continue  # signalled once already: a second TERM can catch a handler mid-way
            try:
                os.kill(tpid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait_gone(self, targets, timeout):
        deadline = self.clock() + timeout
        while True:
            self._reap()
            alive = []
            for tpid, starttime in targets.items():
                p = procs.get(tpid)
                if p is not None and p.alive and p.starttime == starttime:
                    alive.append(tpid)
            if not alive or self.clock() >= deadline:
                return alive
            self.sleep(POLL)

    def _owned_matches(self, top, specs, table):
        """(owned {pid: Proc}, foreign [(Proc, why)]) among the processes matching the patterns of
        specs, judged against the domain of the top-level service `top`."""
        dom = self.domain(top, table)
        owned, foreign = {}, {}
        for s in specs:
            mine, other = dom.classify(s["match"])
            for p, _ in mine:
                owned[p.pid] = p
            for p, why in other:
                foreign.setdefault(p.pid, (p, why))
        return owned, list(foreign.values())

    def _sweep(self, top, specs, stop_timeout):
        """Kill what matches the patterns of `top` (and of `specs`) and is provably its own
        (ownership.py); prove none is left. A match that is not its own is reported, not touched."""
        specs = [top] + [s for s in specs if s is not top]
        table = self._snapshot()
        found, foreign = self._owned_matches(top, specs, table)
        orphans = [{"pid": p.pid, "cmd": p.cmdline[:100]} for p in found.values()]
        if found:
            targets = {p.pid: p.starttime for p in found.values()}
            self._signal([], targets, signal.SIGTERM)
            alive = self._wait_gone(targets, stop_timeout)
            if alive:
                self._signal([], {p: targets[p] for p in alive}, signal.SIGKILL)
                self._wait_gone({p: targets[p] for p in alive}, KILL_WAIT)
        table = self._snapshot()
        left, foreign = self._owned_matches(top, specs, table)
        extra = {}
        if foreign:
            extra = {
                "foreign": [{"pid": p.pid, "cmd": p.cmdline[:100], "why": why} for p, why in foreign],
                "foreign_note": ownership.foreign_note(table, foreign, top["name"]),
            }
        if left:
            return dict(extra, **{
                "name": top["name"],
                "outcome": "failed",
                "orphans": orphans,
                "detail": "processes still running after stop: %s" % describe_pids(table, left),
            })
        for s in specs:
            if s.get("port"):
                holders = procs.listening_pids(s["port"])
                if holders:
                    return dict(extra, **{
                        "name": top["name"],
                        "outcome": "failed",
                        "orphans": orphans,
                        "detail": "port %d is still held after stop by %s"
                        % (s["port"], describe_pids(table, holders)),
                    })
        return dict(extra, **{
            "name": top["name"],
            "outcome": "stopped",
            "orphans": orphans,
            "detail": "swept %d orphan(s)" % len(orphans) if orphans else "nothing left",
        })


def missing_checkout(checkout, cwd):
    """Why a service cannot start for want of code on the host (None when the code is there)."""
    if not os.path.isdir(checkout):
        return "no checkout at %s on this host yet: run `inv deploy` first (it creates it)" % checkout
    if not os.path.isdir(cwd):
        return "working directory %s does not exist in the checkout; run `inv deploy` first" % cwd
    return None
