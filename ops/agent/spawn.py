"""Start services, on the host: pre-flight (no second copy of what it owns, no port held), spawn in
a new session with the ownership marker in its environment, then poll the gates; a failed start
leaves nothing of its own behind (terminate.py does the killing).
"""

import os
import signal
import subprocess
import sys
import time

from . import ownership, procs, supview
from .gates import (
    LogMatcher,
    LogWatch,
    child_gate,
    describe_pids,
    health_checks,
    health_label,
    http_check,
    port_gate,
    tail_lines,
    tree_pids,
)
from .hostview import LOG_TAIL, POLL, HostView
from .state import expand, read_json, write_json_atomic

SETTLE = 1.0  # a service without gates must stay up this long to count as started
WAIT_NOTE = 2.0  # while gates are pending, a "waiting on ..." progress event this often (s)


def _default_signals():
    """In the child before exec: the agent ignores SIGHUP (its SSH session may go away) and
    ignored signals survive exec; a service must get the default (stop_signal = "HUP" works).
    Popen's restore_signals already resets SIGPIPE/SIGXFSZ. The agent has no threads."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class StartMixin(HostView):
    def start(self, specs, all_specs):
        self.prepare(specs, all_specs)
        self.remember_secrets(specs, all_specs)
        results = []
        failed = None
        for spec in specs:
            if failed:
                results.append(
                    {"name": spec["name"], "outcome": "skipped", "detail": "not started: %s failed" % failed}
                )
                continue
            unit = self.unit_spec(spec)
            if unit is not None:
                r = self.units().start_one(unit, [all_specs[c] for c in spec.get("children") or []])
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
        ok, detail, pids = child_gate(self.snapshot(), sup_pid, spec["match"])
        return {
            "name": spec["name"],
            "outcome": "supervised" if ok else "failed",
            "pid": pids[0] if pids else None,
            "detail": ("started by %s: " % sup["name"]) + detail,
        }


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
            table = self.snapshot()
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
        table = self.snapshot()
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
        log_path = self.log_path(spec)
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
                watches[c["name"]] = LogWatch(self.log_path(c))
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


    def _spawn_and_gate(self, spec, children, argv, cwd, env, watches, t_start, m_start, supervised=None,
                        start_id=None):
        name = spec["name"]
        log_path = self.log_path(spec)
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
        self.note(name, "spawned", "spawned pid %d" % proc.pid)

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
            table = self.snapshot() if any(g["table"] for g in gates) else {}
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
                    self.note(name, "gate", "gate %s passed after %.2fs"
                               % (g["name"], passed[-1]["elapsed"]))
            if not gates:
                self.mark_quietly(name, gating=False)
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
                self.note(name, "waiting", "waiting on gate %s for %.0fs (timeout %gs): %s"
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
        table = self.snapshot()
        if starttime is None and proc.returncode is None and proc.pid in table:
            # its identity could not be read at the spawn; it is our child, not reaped yet, so
            # the pid is still its own
            starttime = table[proc.pid].starttime
        record = {"pid": proc.pid, "starttime": starttime, "pgid": proc.pid, "boot_id": procs.boot_id()}
        cleanup = self._terminate(spec, record, timeout=min(spec["stop_timeout"], 5.0), start_id=start_id)
        self.reap()
        if cleanup["alive"]:
            detail += "; still alive after SIGKILL: %s" % describe_pids(self.snapshot(), cleanup["alive"])
        self.mark_quietly(
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
            log_tail=self.tail(spec, since=position),
            child_log_tails=self._child_tails(spec, children, gate),
            cleanup=cleanup,
        )


    def _child_tails(self, spec, children, gate):
        """The log of the child whose gate failed, when it is not the supervisor's own log."""
        out = {}
        for c in children:
            if gate.startswith(c["name"] + ":") and self.log_path(c) != self.log_path(spec):
                out[c["name"]] = self.tail(c, n=LOG_TAIL)
        return out


def missing_checkout(checkout, cwd):
    """Why a service cannot start for want of code on the host (None when the code is there)."""
    if not os.path.isdir(checkout):
        return "no checkout at %s on this host yet: run `inv deploy` first (it creates it)" % checkout
    if not os.path.isdir(cwd):
        return "working directory %s does not exist in the checkout; run `inv deploy` first" % cwd
    return None
