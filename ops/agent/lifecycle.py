"""Start, stop and status of services, run on the host in one agent call per phase.

Identity: a process the tool started is pid + start time + boot id (procs.identity); a pid whose
start time or boot id differs is someone else's and is never signalled.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time

from . import procs
from .gates import (
    LogWatch,
    child_gate,
    describe_pids,
    http_check,
    port_gate,
    tail_lines,
    tree_pids,
)
from .secrets import Secrets
from .state import StateStore, expand, read_json, write_json_atomic

POLL = 0.02  # gate and stop polling interval (s)
KILL_WAIT = 5.0  # how long to wait for SIGKILL to take effect
LOG_TAIL = 20
SETTLE = 1.0  # a service without gates must stay up this long to count as started
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

    # --- helpers ---------------------------------------------------------------------------

    def _reap(self):
        for pid, p in list(self.spawned.items()):
            if p.poll() is not None:
                del self.spawned[pid]

    def _snapshot(self):
        self._reap()
        return procs.snapshot()

    def _pgrep(self, table, pattern):
        return procs.pgrep(table, pattern, exclude=self.protected)

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

    # --- status ----------------------------------------------------------------------------

    def status(self, specs, all_specs, health=True):
        self._remember_secrets(specs, all_specs)
        table = self._snapshot()
        return [self.secrets.redact_obj(self._status_one(spec, all_specs, table, health)) for spec in specs]

    def _status_one(self, spec, all_specs, table, health):
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
            elif sup is not None and sup.get("state") in ("fatal", "done") and not state.get("stopped"):
                out.update(
                    state="fatal" if sup["state"] == "fatal" else "stopped",
                    detail=("crash loop: %d short runs (exit codes %s); `start %s` resets it" % (
                        len(sup.get("short_runs") or []),
                        ", ".join(str(c) for c in sup.get("short_runs") or []), name)
                        if sup["state"] == "fatal" else "finished (exit 0)"))
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
        if out["pid"] is not None:
            p = table.get(out["pid"])
            if p is not None:
                out["uptime"] = max(0.0, time.time() - p.start_epoch)
        strays = [
            p
            for p in self._pgrep(table, spec["match"])
            if owner_root is None or p.pid not in tree_pids(table, owner_root)
        ]
        if strays and out["state"] != "running":
            out["state"] = "unknown" if out["state"] == "stopped" else out["state"]
            out["detail"] = (out["detail"] + "; " if out["detail"] else "") + (
                "not started by this tool but running: %s" % describe_pids(table, [p.pid for p in strays])
            )
        if spec["port"]:
            holders = procs.listening_pids(spec["port"])
            mine = tree_pids(table, owner_root) if owner_root else set()
            out["port_holders"] = [
                {"pid": h, "cmd": (table[h].cmdline[:80] if h in table else "?"), "own": h in mine}
                for h in sorted(holders)
            ]
            out["port_ok"] = bool(holders & mine)
        if health and spec.get("health") and out["state"] == "running":
            t = time.monotonic()
            ok, detail, _ = http_check(spec["health"], self.secrets)
            out["health"] = {
                "ok": ok,
                "detail": self.secrets.redact(detail),
                "ms": round((time.monotonic() - t) * 1000, 1),
            }
        return out

    # --- start -----------------------------------------------------------------------------

    def start(self, specs, all_specs):
        self._remember_secrets(specs, all_specs)
        results = []
        failed = None
        for spec in specs:
            if failed:
                results.append(
                    {"name": spec["name"], "outcome": "skipped", "detail": "not started: %s failed" % failed}
                )
                continue
            if spec.get("supervised_by"):
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

        # Pre-flight: no second copy, no port held by anyone.
        table = self._snapshot()
        for s in [spec] + list(children):
            running = self._pgrep(table, s["match"])
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
        cwd = expand(spec.get("cwd") or self.checkout, self.checkout)
        if not os.path.isdir(cwd):
            return self._result(
                spec,
                "failed",
                detail=("working directory %s does not exist on the host; deploy the code first" % cwd),
            )
        try:
            argv = shlex.split(spec["cmd"])
        except ValueError as exc:
            return self._result(spec, "failed", detail="cannot parse cmd: %s" % exc)
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
                                        supervised)
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
        }
        spec_path = os.path.join(self.store.root, "services", name + ".supervise.json")
        write_json_atomic(spec_path, sup_spec)
        try:
            os.unlink(state_path)  # a fresh supervisor: a fatal breaker is reset by start
        except FileNotFoundError:
            pass
        return [sys.executable, archive, "supervise", spec_path], state_path

    def supervisor_state(self, state):
        """What the tool's supervisor last wrote for a service it runs (None if not supervised)."""
        if not state or not state.get("supervisor_state"):
            return None
        return read_json(state["supervisor_state"])

    def _spawn_and_gate(self, spec, children, argv, cwd, env, watches, t_start, m_start, supervised=None):
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
            },
        )
        self.emit({"event": "progress", "service": name, "message": "spawned pid %d" % proc.pid})

        gates = self._gate_list(spec, children, proc.pid, t_start, watches)
        deadline = m_start + max([spec["ready"]["timeout"]] + [c["ready"]["timeout"] for c in children])
        passed = []

        def fail(gate, detail, exit_code=None):
            return self._failed_start(spec, children, proc, ident["starttime"], t_start, position,
                                      passed, gate, detail, exit_code=exit_code)

        while True:
            rc = proc.poll()
            if rc is not None:
                self.spawned.pop(proc.pid, None)
                pending = gates[0]["name"] if gates else "process"
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
            if not gates:
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
            self.sleep(POLL)

    def _gate_list(self, spec, children, pid, t_start, watches):
        gates = []

        def log_gate(watch, pattern):
            rx = re.compile(pattern)
            seen = {"last": None}

            def check(_table):
                for line in watch.new_lines():
                    seen["last"] = line
                    if rx.search(line):
                        return True, "log line matched: %s" % self.secrets.redact(line.strip())[:120]
                last = seen["last"]
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
            def check(_table):
                ok, detail, _ = http_check(health, self.secrets, timeout=1.0)
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
            if ready.get("health") and s.get("health"):
                gates.append({"name": prefix + "health", "check": health_check(s["health"]), "table": False})
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
            if s.get("health"):
                ok, detail, _ = http_check(s["health"], self.secrets)
                out.append({"name": prefix + "health", "ok": ok, "detail": self.secrets.redact(detail)})
        return out

    def _failed_start(
        self, spec, children, proc, starttime, t_start, position, passed, gate, detail, exit_code=None
    ):
        """Leave nothing half-started: kill the group, its tree and anything it spawned.

        exit_code is the service's own exit code when it exited by itself; not when we killed it."""
        table = self._snapshot()
        if starttime is None and proc.returncode is None and proc.pid in table:
            # its identity could not be read at the spawn; it is our child, not reaped yet, so
            # the pid is still its own
            starttime = table[proc.pid].starttime
        cleanup = self._terminate(
            table,
            proc.pid,
            proc.pid,
            spec,
            children,
            since=t_start,
            timeout=min(spec["stop_timeout"], 5.0),
            starttime=starttime,
        )
        self._reap()
        if cleanup["alive"]:
            detail += "; still alive after SIGKILL: %s" % describe_pids(self._snapshot(), cleanup["alive"])
        self.store.mark(
            spec["name"], stopped=True, last_start="failed", stopped_at=time.time(), exit_code=exit_code
        )
        return self._result(
            spec,
            "failed",
            pid=proc.pid,
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
        self._remember_secrets(specs, all_specs)
        results = []
        for spec in specs:
            if spec.get("supervised_by"):
                r = self._verify_child_stopped(spec, all_specs)
            else:
                r = self.stop_one(spec, [all_specs[c] for c in spec.get("children") or []])
            r = self.secrets.redact_obj(r)
            self.emit({"event": "service", "phase": "stop", "result": r})
            results.append(r)
        ok = all(r["outcome"] != "failed" and not r.get("state_error") for r in results)
        return {"ok": ok, "services": results}

    def _mark_after_stop(self, result, name, **fields):
        """Record a stop in the service's state; a failed write (disk full) never aborts the stop
        of this or the next services: it is reported in the result (and fails the phase)."""
        try:
            self.store.mark(name, **fields)
        except OSError as exc:
            err = "%s was not written to %s: %s" % (getattr(exc, "what", "its state"), exc.filename,
                                                    exc.strerror)
            result["state_error"] = err
            result["detail"] = result.get("detail", "") + "; " + err

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
        left = self._pgrep(table, spec["match"])
        if left:
            # the supervisor is gone: these are orphans; sweep them like the supervisor's stop does
            swept = self._sweep(spec, [])
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
        state = self.store.load(name)
        pid, note = self.live_pid(spec, state)
        signalled, escalated = [], False
        if pid is not None and state.get("supervisor_state"):
            # its SIGTERM handler sets a flag; it then stops the child (TERM, wait, KILL) and exits
            sup = {pid: state.get("starttime")}
            self._signal(None, sup, signal.SIGTERM)
            signalled = [pid]
            self._wait_gone(sup, spec["stop_timeout"] + KILL_WAIT + 1.0)
        table = self._snapshot()
        if pid is not None:
            term = self._terminate(
                table,
                pid,
                state.get("pgid") or pid,
                spec,
                children,
                timeout=spec["stop_timeout"],
                signame=spec.get("stop_signal", "TERM"),
                starttime=state.get("starttime"),
            )
            signalled, escalated = sorted(set(signalled) | set(term["signalled"])), term["escalated"]
            if term["alive"]:
                return {
                    "name": name,
                    "outcome": "failed",
                    "pid": pid,
                    "signalled": signalled,
                    "escalated": True,
                    "detail": "still alive after SIGKILL: %s"
                    % describe_pids(self._snapshot(), term["alive"]),
                }
        marks = {}
        if pid is None and note:
            self._mark_after_stop(marks, name, stale=True, stale_note=note)
        swept = self._sweep(spec, children)
        if swept["outcome"] == "failed":
            return dict(swept, signalled=signalled, escalated=escalated, pid=pid)
        self._mark_after_stop(marks, name, stopped=True, stopped_at=time.time(), stopped_by="user")
        if pid is None and not swept["orphans"]:
            detail = "was not running" + ("; " + note + " (not signalled)" if note else "")
            outcome = "not-running"
        else:
            detail = (
                "stopped"
                + (" pid %d" % pid if pid else "")
                + (" (escalated to SIGKILL)" if escalated else "")
            )
            if swept["orphans"]:
                detail += "; killed %d orphan(s): %s" % (
                    len(swept["orphans"]),
                    ", ".join("%d" % o["pid"] for o in swept["orphans"]),
                )
            outcome = "stopped"
        return {
            "name": name,
            "outcome": outcome,
            "pid": pid,
            "signalled": signalled,
            "escalated": escalated,
            "orphans": swept["orphans"],
            "detail": detail + marks.get("detail", ""),
            "note": note,
            "state_error": marks.get("state_error"),
        }

    def _targets(self, table, pid, starttime, pgid, specs, since=None):
        """What belongs to the service right now: the root pid (only while it is the same
        process) and its descendants, its process group, and for a failed start also the
        processes matching its patterns born since the start.

        A root whose start time is unknown is never a target (its pid may be someone else's now),
        nor is a group whose id is now the pid of another process (a reused group id)."""
        targets = {}
        root = table.get(pid)
        if root is not None and root.alive and starttime is not None and root.starttime == starttime:
            targets[pid] = root.starttime
            for p in procs.descendants(table, pid):
                if p.alive:
                    targets[p.pid] = p.starttime
        leader = table.get(pgid) if pgid else None
        if pgid == pid and leader is not None and leader.starttime != starttime:
            pgid = None  # that group id now belongs to a process that is not the one we started
        if pgid:
            for p in table.values():
                if p.alive and p.pgid == pgid:
                    targets[p.pid] = p.starttime
        if since is not None:
            for s in specs:
                for p in self._pgrep(table, s["match"]):
                    if p.start_epoch >= since - 1.0:
                        targets[p.pid] = p.starttime
        for safe in self.protected:
            targets.pop(safe, None)
        return targets

    def _terminate(
        self, table, pid, pgid, spec, children, timeout, signame="TERM", since=None, starttime=None
    ):
        """Signal the group and the tree, wait, then KILL what is left (and whatever the group or
        tree gained meanwhile, e.g. a child respawned by a dying supervisor)."""
        specs = [spec] + list(children)
        targets = self._targets(table, pid, starttime, pgid, specs, since)
        signalled = set(targets)
        self._signal(pgid, targets, _signum(signame))
        alive = self._wait_gone(targets, timeout)
        left = {p: targets[p] for p in alive}
        left.update(self._targets(self._snapshot(), pid, starttime, pgid, specs, since))
        escalated = bool(left)
        if left:
            signalled |= set(left)
            self._signal(pgid, left, signal.SIGKILL)
            alive = self._wait_gone(left, KILL_WAIT)
        return {"signalled": sorted(signalled), "escalated": escalated, "alive": alive}

    def _signal(self, pgid, targets, signum):
        """Signal each target that is still the same process (pid + start time); the whole group
        too, but only while one of them is in it (so the group id cannot have been reused)."""
        live = {}
        for tpid, starttime in targets.items():
            p = procs.get(tpid)
            if p is not None and p.alive and p.starttime == starttime:
                live[tpid] = p.pgid
        sent_group = False
        if pgid and pgid in live.values():
            try:
                os.killpg(pgid, signum)
                sent_group = True
            except (ProcessLookupError, PermissionError):
                pass
        for tpid, tpgid in live.items():
            if sent_group and tpgid == pgid:
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

    def _sweep(self, spec, children):
        """Kill every process matching the service's and its children's patterns; prove none is left."""
        specs = [spec] + list(children)
        table = self._snapshot()
        found = {}
        for s in specs:
            for p in self._pgrep(table, s["match"]):
                found[p.pid] = p
        orphans = [{"pid": p.pid, "cmd": p.cmdline[:100]} for p in found.values()]
        if found:
            targets = {p.pid: p.starttime for p in found.values()}
            self._signal(None, targets, signal.SIGTERM)
            alive = self._wait_gone(targets, spec["stop_timeout"])
            if alive:
                self._signal(None, {p: targets[p] for p in alive}, signal.SIGKILL)
                self._wait_gone({p: targets[p] for p in alive}, KILL_WAIT)
        table = self._snapshot()
        left = {}
        for s in specs:
            for p in self._pgrep(table, s["match"]):
                left[p.pid] = p
        if left:
            return {
                "name": spec["name"],
                "outcome": "failed",
                "orphans": orphans,
                "detail": "processes still running after stop: %s" % describe_pids(table, left),
            }
        for s in specs:
            if s.get("port"):
                holders = procs.listening_pids(s["port"])
                if holders:
                    return {
                        "name": spec["name"],
                        "outcome": "failed",
                        "orphans": orphans,
                        "detail": "port %d is still held after stop by %s"
                        % (s["port"], describe_pids(table, holders)),
                    }
        return {
            "name": spec["name"],
            "outcome": "stopped",
            "orphans": orphans,
            "detail": "swept %d orphan(s)" % len(orphans) if orphans else "nothing left",
        }
