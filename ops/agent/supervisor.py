"""A small supervisor process, run on the host, for services with a restart policy.

    python3 agent-<hash>.pyz supervise SPEC.json

It is started detached by the agent (its own session), inherits the service's environment and log
file (opened once by the agent), and runs the service's command as its child in the child's own
process group. Policy (per service in hosts.toml):

- restart = "on-failure": a non-zero exit (or a signal) is restarted; exit 0 means done.
  restart = "always": every exit is restarted.
- backoff: the first restart waits `backoff` seconds, each next one twice as long, capped at
  `backoff_max`; `stable_after` seconds of uptime resets it.
- breaker: after `breaker` consecutive runs shorter than `min_uptime`, stop retrying: log a
  CRITICAL line naming the service, the exit codes and how to reset, record state "fatal" and exit.
- heartbeat: a child whose heartbeat (file mtime or JSON field) is older than max_age is frozen:
  its group is stopped (TERM, then KILL) and it is restarted, counted like a crash. Checked at
  least every max_age/4.
- max_instances: never spawn while that many processes already match the service's pattern.

Signals: SIGTERM/SIGINT/SIGHUP only set a flag. The main loop then stops the child (TERM to its
group, wait stop_timeout, KILL) and exits; an explicit stop is never followed by a restart.

Every transition is written atomically to the state file, so `status` can show running /
backoff (next try in Ns) / fatal / stopped, the restart count, last exit code and reason.
"""

import json
import os
import signal
import subprocess
import sys
import time

from . import ownership, procs
from .gates import heartbeat_age
from .state import write_json_atomic

TICK = 0.05
KILL_WAIT = 5.0


def log(message):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    sys.stdout.write("%s.%03d [ops-supervisor] %s\n" % (stamp, int(now * 1000) % 1000, message))
    sys.stdout.flush()


class Supervisor:
    def __init__(self, spec, clock=time.time, sleep=time.sleep):
        self.spec = spec
        self.name = spec["name"]
        r = spec.get("restart") or {}
        self.policy = r.get("policy", "on-failure")
        self.backoff0 = float(r.get("backoff", 1.0))
        self.backoff_max = float(r.get("backoff_max", 300.0))
        self.stable_after = float(r.get("stable_after", 60.0))
        self.breaker = int(r.get("breaker", 5))
        self.min_uptime = float(r.get("min_uptime", 30.0))
        self.heartbeat = spec.get("heartbeat")
        self.clock = clock
        self.sleep = sleep
        self.stop_requested = None
        self.child = None
        self.child_started = None
        self.backoff = self.backoff0
        self.next_try = clock()
        self.restarts = 0
        self.short_runs = []  # exit codes of the consecutive short runs
        self.last_exit = None
        self.last_reason = None
        self.last_hb_check = 0.0
        self.state = "starting"

    # --- state ------------------------------------------------------------------------------

    def save(self):
        child = self.child
        data = {
            "name": self.name, "supervisor_pid": os.getpid(), "state": self.state,
            "policy": self.policy, "restarts": self.restarts, "last_exit": self.last_exit,
            "last_reason": self.last_reason, "backoff": self.backoff,
            "next_try": self.next_try if self.state == "backoff" else None,
            "child_pid": child.pid if child else None,
            "child_starttime": (procs.identity(child.pid) or {}).get("starttime") if child else None,
            "child_started_at": self.child_started, "short_runs": list(self.short_runs),
            "updated_at": time.time(),
        }
        write_json_atomic(self.spec["state_path"], data)

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

    def spawn(self):
        limit = self.spec.get("max_instances")
        if limit and self._instances() >= limit:
            self.last_reason = "max_instances %d reached: %d running" % (limit, self._instances())
            log("%s: not spawning: %s" % (self.name, self.last_reason))
            self._schedule(self.last_reason)
            return
        try:
            self.child = subprocess.Popen(
                self.spec["argv"], cwd=self.spec["cwd"], stdin=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        except OSError as exc:
            self.last_reason = "cannot run %s: %s" % (self.spec["argv"][0], exc.strerror or exc)
            log("%s: %s" % (self.name, self.last_reason))
            self._count_short(127)
            if self.state != "fatal":
                self._schedule(self.last_reason)
            return
        self.child_started = self.clock()
        self.state = "running"
        log("%s: started pid %d (restarts so far: %d)" % (self.name, self.child.pid, self.restarts))
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
            log("%s: pid %d ignored %s for %.1fs (%s); escalating" % (
                self.name, child.pid, signal.Signals(s).name, wait, reason))
        # the group may still hold grandchildren; the child is reaped now, so its pid (the group
        # id) is only still ours while a member of the group is alive: never signal a reused id
        if any(p.alive and p.pgid == child.pid for p in procs.snapshot().values()):
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.child = None
        return child.returncode

    def _count_short(self, code):
        self.short_runs.append(code)
        if len(self.short_runs) >= self.breaker:
            self.state = "fatal"
            self.last_reason = "crash loop"
            log("CRITICAL %s: %d consecutive runs shorter than %gs (exit codes %s); not restarting. "
                "Reset it with `inv start %s`" % (
                    self.name, len(self.short_runs), self.min_uptime,
                    ", ".join(str(c) for c in self.short_runs), self.name))
            self.save()

    def _schedule(self, reason):
        self.state = "backoff"
        self.next_try = self.clock() + self.backoff
        log("%s: %s; restarting in %gs" % (self.name, reason, self.backoff))
        self.backoff = min(self.backoff * 2, self.backoff_max)
        self.save()

    def on_exit(self, code, reason=None):
        uptime = self.clock() - (self.child_started or self.clock())
        self.child = None
        self.last_exit = code
        desc = "exited with code %s" % code if code is None or code >= 0 else "killed by signal %d" % -code
        self.last_reason = reason or desc
        log("%s: pid exited: %s after %.1fs" % (self.name, self.last_reason, uptime))
        if code == 0 and self.policy == "on-failure" and reason is None:
            self.state = "done"
            log("%s: finished (exit 0); not restarting (restart = on-failure)" % self.name)
            self.save()
            return
        if uptime < self.min_uptime:
            self._count_short(code)
        else:
            self.short_runs = []
        if self.state == "fatal":
            return
        self.restarts += 1
        self._schedule(self.last_reason)

    def check_heartbeat(self):
        hb = self.heartbeat
        if not hb or self.child is None:
            return
        now = self.clock()
        interval = max(0.05, float(hb["max_age"]) / 4.0)
        if now - self.last_hb_check < interval:
            return
        self.last_hb_check = now
        # the child gets max_age from its start to write its first heartbeat
        if now - self.child_started < float(hb["max_age"]):
            return
        age, detail = heartbeat_age(hb, now=time.time())
        if age is None or age > float(hb["max_age"]):
            log("%s: frozen: %s (max_age %gs); stopping its group" % (self.name, detail, hb["max_age"]))
            code = self.stop_child("frozen")
            self.on_exit(code, reason="frozen: " + detail)

    def tick(self):
        """One pass of the main loop. Returns False when the supervisor should exit."""
        if self.stop_requested is not None:
            code = self.stop_child("stop requested")
            self.state = "stopped"
            if code is not None:
                self.last_exit = code
            self.last_reason = "stopped by signal %d" % self.stop_requested
            log("%s: stopped (signal %d); not restarting" % (self.name, self.stop_requested))
            self.save()
            return False
        if self.state in ("fatal", "done"):
            return False
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
            log("%s: stable for %gs; backoff reset to %gs" % (self.name, self.stable_after, self.backoff0))
        self.check_heartbeat()
        return True

    def run(self):
        def on_signal(signum, frame):
            self.stop_requested = signum

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, on_signal)
        self.save()
        while self.tick():
            self.sleep(TICK)
        return 0


def main(argv):
    if len(argv) != 1:
        sys.stderr.write("usage: supervise SPEC.json\n")
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    return Supervisor(spec).run()
