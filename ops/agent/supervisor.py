"""A small supervisor process, run on the host, for services with a restart policy.

    python3 agent-<hash>.pyz supervise SPEC.json

It is started detached by the agent (its own session), inherits the service's environment and log
file (opened once by the agent), and runs the service's command as its child in the child's own
process group. The child's stdout and stderr are that log; the supervisor's own lines go to a log
of their own (spec "supervisor_log", NAME.supervisor.log), so a log gate only ever reads the
service's words. Policy (per service in hosts.toml):

- restart = "on-failure": a non-zero exit (or a signal) is restarted; exit 0 means done.
  restart = "always": every exit is restarted.
- backoff: the first restart waits `backoff` seconds, each next one twice as long, capped at
  `backoff_max`; `stable_after` seconds of uptime resets it.
- breaker: after `breaker` consecutive runs shorter than `min_uptime`, stop retrying: log a
  CRITICAL line naming the service, the exit codes and how to reset, record state "fatal" and exit.
- max_restarts: after this many restarts in all (whatever their uptime), the next exit is final
  the same way (state "fatal", reason "max_restarts").
- heartbeat: a child whose heartbeat (file mtime or JSON field) is older than max_age, and has
  not changed for max_age, is frozen: its group is stopped (TERM, then KILL) and it is restarted,
  counted like a crash. Checked at least every max_age/4. A heartbeat that cannot be read (a torn
  write, a rename in progress) counts as frozen only when every read for max_age failed.
- max_instances: never spawn while that many processes already match the service's pattern.
- port: never spawn while something listens on the service's port; the holder is named in the
  supervisor's log and the state (shown by status), and the spawn is retried after the backoff.

Uptime, backoff and heartbeat intervals are measured on the monotonic clock (a host without an RTC
steps its wall clock); the state file carries wall-clock times for display.

Signals: SIGTERM/SIGINT/SIGHUP only set a flag. The main loop then stops the child (TERM to its
group, wait stop_timeout, KILL) and exits; an explicit stop is never followed by a restart.

Every transition is written atomically to the state file, so `status` can show running /
backoff (next try in Ns) / fatal / stopped, the restart count, last exit code and reason. A write
that fails (a full disk) never stops the supervisor: the failure is counted and shown in the state
as soon as a write succeeds again (`write_errors`).
"""

import json
import os
import signal
import subprocess
import sys
import time

from . import ownership, procs
from .gates import describe_pids, heartbeat_age
from .state import write_json_atomic

TICK = 0.05
KILL_WAIT = 5.0
SAVE_RETRY = 1.0  # s between tries to write a state that could not be written (a full disk)


def _line(message, now):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    return "%s.%03d [ops-supervisor] %s\n" % (stamp, int(now * 1000) % 1000, message)


class Supervisor:
    def __init__(self, spec, clock=time.monotonic, sleep=time.sleep, wall=time.time, log_fd=1,
                 child_out=None):
        self.spec = spec
        self.name = spec["name"]
        r = spec.get("restart") or {}
        self.policy = r.get("policy", "on-failure")
        self.backoff0 = float(r.get("backoff", 1.0))
        self.backoff_max = float(r.get("backoff_max", 300.0))
        self.stable_after = float(r.get("stable_after", 60.0))
        self.breaker = int(r.get("breaker", 5))
        self.min_uptime = float(r.get("min_uptime", 30.0))
        mr = r.get("max_restarts")
        self.max_restarts = int(mr) if mr is not None else None
        self.heartbeat = spec.get("heartbeat")
        self.port = spec.get("port")
        self.clock = clock  # monotonic: uptime, backoff, heartbeat intervals
        self.wall = wall  # only for what is shown (state file, log stamps)
        self.sleep = sleep
        self.log_fd = log_fd
        self.child_out = child_out  # the service's log (None: the supervisor's own stdout)
        self.stop_requested = None
        self.child = None
        self.child_started = None
        self.child_starttime = None
        self.child_started_wall = None
        self.backoff = self.backoff0
        self.next_try = clock()
        self.restarts = 0
        self.short_runs = []  # exit codes of the consecutive short runs
        self.exit_codes = []  # the service's last exit codes (newest last, at most 20)
        self.last_exit = None
        self.last_reason = None
        self.fatal_reason = None
        self.port_holder = None
        self.last_hb_check = None
        self.hb_value = None  # the heartbeat's last value read, and when (monotonic) it changed
        self.hb_changed = None
        self.hb_bad_since = None  # first of the consecutive failed heartbeat reads (monotonic)
        self.write_errors = {}  # "log" | "state" -> {"count", "last", "at"}
        self.unsaved = None  # when (monotonic) a state write last failed; retried every SAVE_RETRY
        self.state = "starting"

    # --- writing (never fatal) ----------------------------------------------------------------

    def _write_failed(self, what, exc):
        e = self.write_errors.setdefault(what, {"count": 0})
        e.update(count=e["count"] + 1, last=getattr(exc, "strerror", None) or str(exc), at=self.wall())

    def log(self, message):
        data = _line(message, self.wall()).encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.log_fd, data):]
        except OSError as exc:  # a full disk, a log on a vanished mount: never fatal
            self._write_failed("log", exc)

    def save(self):
        child = self.child
        now, wall = self.clock(), self.wall()
        data = {
            "name": self.name, "supervisor_pid": os.getpid(), "state": self.state,
            "policy": self.policy, "restarts": self.restarts, "last_exit": self.last_exit,
            "last_reason": self.last_reason, "backoff": self.backoff,
            "next_try": wall + max(0.0, self.next_try - now) if self.state == "backoff" else None,
            "child_pid": child.pid if child else None,
            "child_starttime": (procs.identity(child.pid) or {}).get("starttime") if child else None,
            "child_started_at": self.child_started_wall,
            "uptime": round(now - self.child_started, 3) if child and self.child_started else None,
            "short_runs": list(self.short_runs), "exit_codes": list(self.exit_codes),
            "fatal_reason": self.fatal_reason, "max_restarts": self.max_restarts,
            "port_holder": self.port_holder, "write_errors": self.write_errors,
            "supervisor_log": self.spec.get("supervisor_log"),
            "updated_at": wall,
        }
        try:
            write_json_atomic(self.spec["state_path"], data)
            self.unsaved = None
        except OSError as exc:
            self._write_failed("state", exc)
            if self.unsaved is None:
                self.log("%s: cannot write its state %s: %s; retrying every %gs" % (
                    self.name, self.spec["state_path"], exc.strerror or exc, SAVE_RETRY))
            self.unsaved = now

    # --- child --------------------------------------------------------------------------------

    def _instances(self):
        """Instances of this service that are its own (ownership.py): another checkout's copy or
        another user's is never counted; a master with its workers is one instance."""
        pattern = self.spec.get("match")
        if not pattern:
            return 0
        table = procs.snapshot()
        dom = ownership.Domain(
            table, self.spec.get("state_root") or "", self.spec.get("checkout") or self.spec["cwd"],
            self.name, protected=procs.self_and_ancestors(table))
        return len(ownership.instances(table, [p for p, _ in dom.classify(pattern)[0]]))

    def _port_held(self):
        """Who holds the service's port now (None if it is free)."""
        if not self.port:
            return None
        holders = procs.listening_pids(self.port)
        if not holders and not procs.port_listening(self.port):
            return None
        return describe_pids(procs.snapshot(), holders)

    def spawn(self):
        limit = self.spec.get("max_instances")
        if limit and self._instances() >= limit:
            self.last_reason = "max_instances %d reached: %d running" % (limit, self._instances())
            self.log("%s: not spawning: %s" % (self.name, self.last_reason))
            self._schedule(self.last_reason)
            return
        holder = self._port_held()
        self.port_holder = holder
        if holder is not None:
            self.last_reason = "port %d is held by %s" % (self.port, holder)
            self.log("%s: not starting it: %s; find it with `lsof -i :%d` or `ss -ltnp 'sport = :%d'`"
                     % (self.name, self.last_reason, self.port, self.port))
            self._schedule(self.last_reason)
            return
        out = self.child_out if self.child_out is not None else None
        try:
            self.child = subprocess.Popen(
                self.spec["argv"], cwd=self.spec["cwd"], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True, close_fds=True)
        except OSError as exc:
            self.last_reason = "cannot run %s: %s" % (self.spec["argv"][0], exc.strerror or exc)
            self.log("%s: %s" % (self.name, self.last_reason))
            self._count_short(127)
            if self.state != "fatal":
                self._schedule(self.last_reason)
            return
        self.child_started = self.clock()
        self.child_started_wall = self.wall()
        # its start time: a later member of its group (pgid = its pid) is born at or after it
        self.child_starttime = (procs.identity(self.child.pid) or {}).get("starttime")
        self.hb_value, self.hb_changed, self.hb_bad_since = self._hb_value(), self.child_started, None
        self.last_hb_check = None
        self.state = "running"
        self.log("%s: started pid %d (restarts so far: %d)" % (self.name, self.child.pid, self.restarts))
        self.save()

    def stop_child(self, reason):
        child = self.child
        if child is None:
            return None
        sig = getattr(signal, "SIG" + self.spec.get("stop_signal", "TERM"))
        for s, wait in ((sig, float(self.spec.get("stop_timeout", 10.0))), (signal.SIGKILL, KILL_WAIT)):
            try:
                os.killpg(child.pid, s)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + wait
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if child.poll() is not None:
                break
            self.log("%s: pid %d ignored %s for %.1fs (%s); escalating" % (
                self.name, child.pid, signal.Signals(s).name, wait, reason))
        # the group may still hold grandchildren; the child is reaped now, so its pid (the group
        # id) is only still ours while a member of the group is alive: never signal a reused id
        if self._group_left(child.pid):
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.child = None
        return child.returncode

    def _group_left(self, pgid):
        """True while a member of the child's group lives that was born at or after the child (a
        group whose id was reused by a process started later is not ours: ownership.py's rule)."""
        try:
            born = int(getattr(self, "child_starttime", None))
        except (TypeError, ValueError):
            born = None
        for p in procs.snapshot().values():
            if not p.alive or p.pgid != pgid:
                continue
            try:
                if born is None or int(p.starttime) >= born:
                    return True
            except ValueError:
                continue
        return False

    def _fatal(self, why, message):
        self.state = "fatal"
        self.fatal_reason = why
        self.last_reason = "crash loop" if why == "breaker" else "max_restarts %d reached" % self.max_restarts
        self.log(message)
        self.save()

    def _count_short(self, code):
        self.short_runs.append(code)
        if len(self.short_runs) >= self.breaker:
            self._fatal("breaker", "CRITICAL %s: %d consecutive runs shorter than %gs (exit codes %s); "
                        "not restarting. Reset it with `inv start %s`" % (
                            self.name, len(self.short_runs), self.min_uptime,
                            ", ".join(str(c) for c in self.short_runs), self.name))

    def _schedule(self, reason):
        self.state = "backoff"
        self.next_try = self.clock() + self.backoff
        self.log("%s: %s; restarting in %gs" % (self.name, reason, self.backoff))
        self.backoff = min(self.backoff * 2, self.backoff_max)
        self.save()

    def on_exit(self, code, reason=None):
        uptime = self.clock() - (self.child_started if self.child_started is not None else self.clock())
        self.child = None
        self.last_exit = code
        self.exit_codes = (self.exit_codes + [code])[-20:]
        desc = "exited with code %s" % code if code is None or code >= 0 else "killed by signal %d" % -code
        self.last_reason = reason or desc
        self.log("%s: pid exited: %s after %.1fs" % (self.name, self.last_reason, uptime))
        if code == 0 and self.policy == "on-failure" and reason is None:
            self.state = "done"
            self.log("%s: finished (exit 0); not restarting (restart = on-failure)" % self.name)
            self.save()
            return
        if uptime < self.min_uptime:
            self._count_short(code)
        else:
            self.short_runs = []
        if self.state == "fatal":
            return
        if self.max_restarts is not None and self.restarts >= self.max_restarts:
            self._fatal("max_restarts", "CRITICAL %s: restarted %d times (max_restarts %d), last: %s; "
                        "not restarting. Reset it with `inv start %s`" % (
                            self.name, self.restarts, self.max_restarts, self.exit_codes[-1]
                            if reason is None else reason, self.name))
            return
        self.restarts += 1
        self._schedule(self.last_reason)

    # --- heartbeat ----------------------------------------------------------------------------

    def _hb_value(self):
        """The heartbeat's current value (its JSON field or mtime), None if unreadable."""
        if not self.heartbeat:
            return None
        age, _ = heartbeat_age(self.heartbeat, now=0.0)
        return None if age is None else round(-age, 6)  # now=0: -age is the timestamp itself

    def check_heartbeat(self):
        hb = self.heartbeat
        if not hb or self.child is None:
            return
        now = self.clock()
        max_age = float(hb["max_age"])
        if self.last_hb_check is not None and now - self.last_hb_check < max(0.05, max_age / 4.0):
            return
        self.last_hb_check = now
        wall = self.wall()
        age, detail = heartbeat_age(hb, now=wall)
        if age is None:  # unreadable: torn by a non-atomic write, or gone
            if self.hb_bad_since is None:
                self.hb_bad_since = now
                self.log("%s: heartbeat unreadable (%s); frozen only if it stays so for %gs" % (
                    self.name, detail, max_age))
            if now - self.hb_bad_since < max_age or now - self.child_started < max_age:
                return
            detail += " on every read for %.1fs" % (now - self.hb_bad_since)
        else:
            self.hb_bad_since = None
            value = round(wall - age, 6)  # the heartbeat's own timestamp
            if value != self.hb_value:
                self.hb_value, self.hb_changed = value, now
            # the child gets max_age from its start to write its first heartbeat; a wall-clock
            # step makes the age jump, so it must also have stayed unchanged for max_age
            if age <= max_age or now - self.hb_changed < max_age or now - self.child_started < max_age:
                return
        self.log("%s: frozen: %s (max_age %gs); stopping its group" % (self.name, detail, max_age))
        code = self.stop_child("frozen")
        self.on_exit(code, reason="frozen: " + detail)

    # --- loop ---------------------------------------------------------------------------------

    def tick(self):
        """One pass of the main loop. Returns False when the supervisor should exit."""
        if self.stop_requested is not None:
            code = self.stop_child("stop requested")
            self.state = "stopped"
            if code is not None:
                self.last_exit = code
            self.last_reason = "stopped by signal %d" % self.stop_requested
            self.log("%s: stopped (signal %d); not restarting" % (self.name, self.stop_requested))
            self.save()
            return False
        if self.state in ("fatal", "done"):
            return False
        if self.unsaved is not None and self.clock() - self.unsaved >= SAVE_RETRY:
            self.save()
        if self.child is None:
            if self.clock() >= self.next_try:
                self.spawn()
            return True
        code = self.child.poll()
        if code is not None:
            self.on_exit(code)
            return True
        if self.clock() - self.child_started >= self.stable_after and self.backoff != self.backoff0:
            self.backoff = self.backoff0
            self.short_runs = []
            self.save()  # before the log line: whoever reads that line finds the state already saved
            self.log("%s: stable for %gs; backoff reset to %gs" % (
                self.name, self.stable_after, self.backoff0))
        self.check_heartbeat()
        return True

    def run(self):
        def on_signal(signum, frame):
            self.stop_requested = signum

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, on_signal)
        self.save()
        errors = 0
        while True:
            try:
                if not self.tick():
                    break
                errors = 0
            except Exception as exc:  # never die and leave the child without its supervisor
                errors += 1
                self._write_failed("internal", exc)
                self.log("%s: internal error (%s: %s); carrying on" % (self.name, type(exc).__name__, exc))
                if errors > 100:  # the same error on every pass: stop the child and give up
                    self.stop_child("internal error")
                    raise
            self.sleep(TICK)
        return 0


def _own_log(path):
    """Point fds 1 and 2 at the supervisor's own log; the service's log (the agent gave it as
    stdout) is kept for the child. Returns (the child's fd, an error or None)."""
    child_out = os.dup(1)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        err = None
    except OSError as exc:  # its words are lost, never written into the service's log
        fd = os.open(os.devnull, os.O_WRONLY)
        err = exc
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return child_out, err


def main(argv):
    if len(argv) != 1:
        sys.stderr.write("usage: supervise SPEC.json\n")
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    child_out, err = None, None
    if spec.get("supervisor_log"):
        child_out, err = _own_log(spec["supervisor_log"])
    sup = Supervisor(spec, child_out=child_out)
    if err is not None:
        sup._write_failed("log", err)
    return sup.run()
