"""Verification checks, run on the host: the on-host half of `inv verify.*`.

Stdlib only, python3.8+. Each agent op runs a whole check phase in one call (one round trip) and
returns {"checks": [check, ...]} (the watch adds "samples"). A check is a dict with at least
``name``, ``service``, ``ok``, ``detail`` and ``elapsed`` (seconds), plus the evidence it judged:
the process tree, the offending processes, the timings. Checks answer only from what the host
shows now (the process table, a real HTTP request, the heartbeat file); nothing is assumed.

Ownership follows the lifecycle: a top-level service's process is the pid recorded in its state
file (pid + start time + boot id); a supervised service's processes must sit in the tree of its
supervisor's recorded process.
"""

import os
import signal
import time

from . import ownership, procs
from .gates import (
    LogMatcher,
    LogWatch,
    describe_pids,
    health_checks,
    health_label,
    heartbeat_read,
    http_check,
    port_gate,
    run_health_checks,
    tree_pids,
)
from .lifecycle import POLL, Lifecycle
from .state import expand

MB = 1024 * 1024
GROW_RUN = 3  # this many consecutive samples, each larger than the one before: "keeps growing"
TORN_WAIT = 2.0  # s: an unreadable heartbeat is read again this long (at most max_age) before failing


# --------------------------------------------------------------------------- pure helpers


instances = ownership.instances  # a server that forks workers is one instance, not several


def parent_note(table, proc):
    """Who a process's parent is, in words: init (an orphan) or the parent's pid and command."""
    if proc.ppid <= 1:
        return "re-parented to init (ppid %d): an orphan" % proc.ppid
    parent = table.get(proc.ppid)
    if parent is None:
        return "its parent is pid %d (not visible)" % proc.ppid
    return "its parent is %s" % describe_pids(table, [proc.ppid])


def offender(table, proc, reason):
    parent = table.get(proc.ppid)
    return {
        "pid": proc.pid,
        "ppid": proc.ppid,
        "cmd": proc.cmdline[:200],
        "parent_cmd": parent.cmdline[:200] if parent is not None else None,
        "reason": reason + "; " + parent_note(table, proc),
    }


def growing_run(counts, run=GROW_RUN):
    """(start, end) indexes of the first run of >= `run` strictly increasing counts, or None."""
    start = 0
    for i in range(1, len(counts)):
        if counts[i] > counts[i - 1]:
            if i - start + 1 >= run:
                return start, i
        else:
            start = i
    return None


def judge_watch(samples, specs, min_mem_bytes=None):
    """Checks from watch samples: per service (max_instances, growth) and one for memory.

    Pure: ``samples`` are dicts {"t", "counts": {name: n}, "mem_available": bytes or None}.
    """
    checks = []
    for spec in specs:
        name = spec["name"]
        counts = [s["counts"].get(name, 0) for s in samples]
        limit = spec.get("max_instances")
        problems = []
        if limit is not None:
            over = [i for i, c in enumerate(counts) if c > limit]
            if over:
                first = over[0]
                problems.append(
                    "%d processes match /%s/ at t=%.1fs, more than max_instances = %d (peak %d)"
                    % (counts[first], spec["match"], samples[first]["t"], limit, max(counts))
                )
        grow = growing_run(counts)
        if grow is not None:
            a, b = grow
            problems.append(
                "the count keeps growing: %s from t=%.1fs to t=%.1fs"
                % (" -> ".join(str(c) for c in counts[a : b + 1]), samples[a]["t"], samples[b]["t"])
            )
        if problems:
            detail = "; ".join(problems)
        elif not counts:
            detail = "no samples"
        else:
            low, high = min(counts), max(counts)
            detail = "%s process(es) in %d sample(s)%s" % (
                str(low) if low == high else "%d..%d" % (low, high),
                len(counts),
                " (max_instances = %d)" % limit if limit is not None else "",
            )
        checks.append(
            {
                "name": "watch",
                "service": name,
                "ok": not problems,
                "detail": detail,
                "counts": counts,
                "max_instances": limit,
            }
        )
    mems = [s["mem_available"] for s in samples]
    known = [m for m in mems if m is not None]
    floor_text = " (floor %d MB)" % (min_mem_bytes // MB) if min_mem_bytes else " (no floor set)"
    if min_mem_bytes and len(known) < len(mems):
        ok, detail = False, "available memory cannot be read on this host, so the floor cannot be checked"
    elif min_mem_bytes and known and min(known) < min_mem_bytes:
        low = [i for i, m in enumerate(mems) if m is not None and m < min_mem_bytes][0]
        ok = False
        detail = "MemAvailable fell to %d MB at t=%.1fs, below the floor of %d MB" % (
            mems[low] // MB,
            samples[low]["t"],
            min_mem_bytes // MB,
        )
    elif known:
        ok, detail = True, "MemAvailable %d..%d MB%s" % (min(known) // MB, max(known) // MB, floor_text)
    else:
        ok, detail = True, "available memory is unknown on this host" + floor_text
    checks.append(
        {
            "name": "memory",
            "service": None,
            "ok": ok,
            "detail": detail,
            "min_mem_available": min(known) if known else None,
            "floor": min_mem_bytes,
        }
    )
    return checks


def sample_failed(samples, specs, min_mem_bytes):
    """True once the samples so far already fail a check (the watch then stops early)."""
    return not all(c["ok"] for c in judge_watch(samples, specs, min_mem_bytes))


# --------------------------------------------------------------------------- the checks


class Checks:
    """The verification checks of one request, sharing the lifecycle's view of ownership."""

    def __init__(self, args, emit=None, clock=time.monotonic, sleep=time.sleep):
        self.emit = emit or (lambda event: None)
        self.lc = Lifecycle(args["host"], self.emit)
        specs = args.get("services") or []
        self.specs = specs
        self.all_specs = dict((s["name"], s) for s in (args.get("all_services") or specs))
        self.lc.prepare(self.specs, self.all_specs)
        # the secrets of every service of the host (env_file values, header files) are redacted
        # from every check sent back: a log line matched by a gate can carry a token
        self.lc.remember_secrets(self.specs, self.all_specs)
        self.clock = clock
        self.sleep = sleep

    # --- helpers -----------------------------------------------------------------------

    def snapshot(self):
        return self.lc.snapshot()

    def _owned(self, spec, table):
        """(owned [Proc], foreign [(Proc, why)]) for the service's pattern (Lifecycle.matches)."""
        return self.lc.matches(spec, table, self.all_specs)

    def _foreign(self, table, spec, foreign):
        note = ownership.foreign_note(table, foreign, spec["name"])
        return ("; " + note) if note else ""

    def _check(self, name, spec, ok, detail, t0, **extra):
        c = {
            "name": name,
            "service": spec["name"] if spec else None,
            "ok": bool(ok),
            "detail": detail,
            "elapsed": round(self.clock() - t0, 3),
        }
        c.update(extra)
        return self.lc.secrets.redact_obj(c)

    def _progress(self, spec, message):
        self.emit({"event": "progress", "service": spec["name"], "message": message})

    def owner(self, spec):
        """(root pid or None, why none): the process whose tree a service's processes belong in."""
        sup_name = spec.get("supervised_by")
        if sup_name:
            sup = self.all_specs[sup_name]
            pid, note = self.lc.live_pid(sup)
            if pid is None:
                return None, "its supervisor %s is not running%s" % (sup_name, "; " + note if note else "")
            return pid, None
        pid, note = self.lc.live_pid(spec)
        if pid is None:
            return None, "%s is not running (no live pid recorded by this tool)%s" % (
                spec["name"],
                "; " + note if note else "",
            )
        return pid, None

    # --- tree --------------------------------------------------------------------------

    def tree(self, spec):
        t0 = self.clock()
        table = self.snapshot()
        if spec.get("supervised_by"):
            return self._tree_supervised(spec, self.all_specs[spec["supervised_by"]], table, t0)
        return self._tree_top(spec, table, t0)

    def _tree_top(self, spec, table, t0):
        name = spec["name"]
        pid, why = self.owner(spec)
        matches, foreign = self._owned(spec, table)
        if pid is None:
            offenders = [offender(table, p, "not started by this tool") for p in matches]
            detail = why
            if offenders:
                detail += "; but %d process(es) match /%s/: %s" % (
                    len(offenders),
                    spec["match"],
                    describe_pids(table, [o["pid"] for o in offenders]),
                )
            detail += self._foreign(table, spec, foreign)
            return self._check("tree", spec, False, detail, t0, pid=None, tree=[], offenders=offenders)
        own = tree_pids(table, pid)
        strays = [p for p in matches if p.pid not in own]
        lines = procs.tree_lines(table, pid)
        if strays:
            offenders = [offender(table, p, "a second copy outside pid %d's tree" % pid) for p in strays]
            detail = "%s runs as pid %d, but it runs twice: %s also match%s /%s/ outside its tree (%s)" % (
                name,
                pid,
                describe_pids(table, [p.pid for p in strays]),
                "es" if len(strays) == 1 else "",
                spec["match"],
                parent_note(table, strays[0]),
            )
            return self._check("tree", spec, False, detail, t0, pid=pid, tree=lines, offenders=offenders)
        sup = self.lc.supervisor_state(self.lc.store.load(name) or {})
        down = self._supervised_child_down(spec, sup, pid, table)
        if down:
            return self._check("tree", spec, False, down, t0, pid=pid, tree=lines, offenders=[])
        detail = "pid %d is alive (%d process(es) in its tree)" % (pid, len(own))
        if sup is not None:
            detail = "pid %d runs under the tool's supervisor (pid %d; %d process(es) in its tree)" % (
                sup.get("child_pid"), pid, len(own))
        detail += self._foreign(table, spec, foreign)
        return self._check("tree", spec, True, detail, t0, pid=pid, tree=lines, offenders=[])

    def _supervised_child_down(self, spec, sup, sup_pid, table):
        """For a service run by the tool's own supervisor (sup: the supervisor's state): why its own
        process is not up (backoff, fatal, gone), or "" when it runs. The supervisor being alive
        proves nothing by itself."""
        if sup is None:
            return ""
        child = sup.get("child_pid")
        proc = table.get(child) if child else None
        if sup.get("state") == "running" and proc is not None and proc.alive and (
            sup.get("child_starttime") is None or proc.starttime == str(sup.get("child_starttime"))
        ) and child in tree_pids(table, sup_pid):
            return ""
        what = sup.get("state") or "unknown"
        if what == "backoff":
            wait = max(0.0, (sup.get("next_try") or time.time()) - time.time())
            what = "backoff (next try in %.0fs)" % wait
        return "%s is down: its supervisor (pid %d) is alive, but the service is %s%s" % (
            spec["name"], sup_pid, what,
            "; last: %s" % sup.get("last_reason") if sup.get("last_reason") else "")

    def _tree_supervised(self, spec, sup, table, t0):
        name, pattern = spec["name"], spec["match"]
        sup_pid, why = self.owner(spec)
        owned, foreign = self._owned(spec, table)
        matches = [p for p in owned if p.pid != sup_pid]
        expected = {"service": sup["name"], "pid": sup_pid}
        if sup_pid is None:
            offenders = [offender(table, p, why) for p in matches]
            detail = "%s must run under %s, but %s" % (name, sup["name"], why)
            if offenders:
                detail += "; %d process(es) match /%s/ anyway: %s (%s)" % (
                    len(offenders),
                    pattern,
                    describe_pids(table, [o["pid"] for o in offenders]),
                    parent_note(table, matches[0]),
                )
            return self._check(
                "tree",
                spec,
                False,
                detail,
                t0,
                pid=None,
                tree=[],
                expected_parent=expected,
                offenders=offenders,
            )
        inside = tree_pids(table, sup_pid) - {sup_pid}
        mine = instances(table, [p for p in matches if p.pid in inside])
        outside = [p for p in matches if p.pid not in inside]
        lines = procs.tree_lines(table, sup_pid)
        offenders = [
            offender(table, p, "outside %s's tree (pid %d)" % (sup["name"], sup_pid)) for p in outside
        ]
        problems = []
        if not mine:
            problems.append(
                "no process matching /%s/ runs under %s (pid %d)" % (pattern, sup["name"], sup_pid)
            )
        elif len(mine) > 1:
            problems.append(
                "it runs %d times under %s (pid %d): %s"
                % (len(mine), sup["name"], sup_pid, describe_pids(table, [p.pid for p in mine]))
            )
        if outside:
            problems.append(
                "%s run%s elsewhere, not in its tree: %s"
                % (
                    describe_pids(table, [p.pid for p in outside]),
                    "s" if len(outside) == 1 else "",
                    parent_note(table, outside[0]),
                )
            )
        pid = mine[0].pid if mine else None
        if problems:
            detail = "%s: expected under %s (pid %d), but %s" % (
                name,
                sup["name"],
                sup_pid,
                "; ".join(problems),
            )
            return self._check(
                "tree",
                spec,
                False,
                detail,
                t0,
                pid=pid,
                tree=lines,
                expected_parent=expected,
                offenders=offenders,
            )
        p = mine[0]
        if p.ppid == sup_pid:
            detail = "pid %d is a child of %s (pid %d)" % (p.pid, sup["name"], sup_pid)
        else:
            chain = procs.ancestors(table, p.pid)
            via = chain[: chain.index(sup_pid)] if sup_pid in chain else chain
            detail = "pid %d is a descendant of %s (pid %d), via pid %s" % (
                p.pid,
                sup["name"],
                sup_pid,
                ", ".join(str(v) for v in reversed(via)),
            )
        return self._check(
            "tree", spec, True, detail, t0, pid=p.pid, tree=lines, expected_parent=expected, offenders=[]
        )

    # --- restart -----------------------------------------------------------------------

    def restart(self, spec, signame="KILL", timeout=30.0):
        """Kill the supervised child and wait for its supervisor to bring a new one up."""
        t0 = self.clock()
        name, pattern = spec["name"], spec["match"]
        signame = str(signame).upper()
        if signame.startswith("SIG"):
            signame = signame[3:]
        extra = {"signal": signame, "timeout": timeout, "old_pid": None, "new_pid": None}
        signum = int(signame) if signame.isdigit() else getattr(signal, "SIG" + signame, None)
        if not isinstance(signum, int) or signum <= 0 or signum >= signal.NSIG:
            return self._check("restart", spec, False, "unknown signal %r" % signame, t0, **extra)
        own_policy = (spec.get("restart") or {}).get("policy", "no") != "no"
        if not spec.get("supervised_by") and not own_policy:
            return self._check(
                "restart",
                spec,
                False,
                "%s has no supervisor, so nothing would restart it; it was not killed" % name,
                t0,
                **extra,
            )
        if spec.get("supervised_by"):
            sup = self.all_specs[spec["supervised_by"]]
        else:  # restarted by the tool's own supervisor process, whose pid the state file records
            sup = dict(spec, name="the ops supervisor of " + name)
        sup_pid, why = self.owner(spec)
        if sup_pid is None:
            return self._check("restart", spec, False, why + "; nothing was killed", t0, **extra)
        table = self.snapshot()
        sup_proc = table.get(sup_pid)
        extra["supervisor"] = {"service": sup["name"], "pid": sup_pid}
        if sup_proc is None:
            return self._check(
                "restart", spec, False, "%s (pid %d) just exited" % (sup["name"], sup_pid), t0, **extra
            )
        mine = self._under(table, sup_pid, pattern)
        if len(mine) != 1:
            detail = (
                "no process matching /%s/ runs under %s (pid %d)" % (pattern, sup["name"], sup_pid)
                if not mine
                else "it runs %d times under %s: %s"
                % (len(mine), sup["name"], describe_pids(table, [p.pid for p in mine]))
            )
            return self._check("restart", spec, False, detail + "; nothing was killed", t0, **extra)
        old = mine[0]
        extra["old_pid"] = old.pid
        ready = spec.get("ready") or {}
        watch = LogWatch(expand(spec["log"], self.lc.checkout)) if ready.get("log") else None
        try:
            cur = procs.get(old.pid)  # still the process judged above (pid + start time)?
            if cur is None or not cur.alive or cur.starttime != old.starttime:
                raise ProcessLookupError(old.pid)
            os.kill(old.pid, signum)
        except ProcessLookupError:
            return self._check(
                "restart", spec, False, "pid %d exited before it was killed" % old.pid, t0, **extra
            )
        except PermissionError:
            return self._check(
                "restart", spec, False, "not allowed to signal pid %d (another user's)" % old.pid, t0, **extra
            )
        except OSError as exc:
            detail = "cannot signal pid %d: %s" % (old.pid, exc.strerror or exc)
            return self._check("restart", spec, False, detail, t0, **extra)
        killed = self.clock()
        self._progress(
            spec, "sent SIG%s to pid %d (child of %s pid %d)" % (signame, old.pid, sup["name"], sup_pid)
        )
        deadline = killed + timeout
        new, gone, gates = None, None, []
        while True:
            now = self.clock()
            table = self.snapshot()
            cur = table.get(sup_pid)
            if cur is None or not cur.alive or cur.starttime != sup_proc.starttime:
                detail = "the supervisor %s (pid %d) died %.2fs after its child pid %d was killed" % (
                    sup["name"],
                    sup_pid,
                    now - killed,
                    old.pid,
                )
                return self._check("restart", spec, False, detail, t0, **extra)
            o = table.get(old.pid)
            if gone is None and (o is None or not o.alive or o.starttime != old.starttime):
                gone = now - killed
                extra["gone_after"] = round(gone, 3)
            if new is not None:
                n = table.get(new.pid)
                if n is None or not n.alive or n.starttime != new.starttime:
                    self._progress(spec, "the new pid %d died before it was ready; waiting again" % new.pid)
                    new, gates = None, []
            if new is None:
                fresh = [p for p in self._under(table, sup_pid, pattern)
                         if (p.pid, p.starttime) != (old.pid, old.starttime)]
                if fresh:
                    new = fresh[0]
                    extra["new_pid"] = new.pid
                    extra["appeared_after"] = round(now - killed, 3)
                    self._progress(
                        spec, "new pid %d under %s after %.2fs" % (new.pid, sup["name"], now - killed)
                    )
                    gates = self._restart_gates(spec, watch, new.pid)
            if new is not None:
                for g in gates:
                    if g["ok"]:
                        continue
                    ok, detail = g["check"](table, deadline - self.clock())
                    g["detail"] = detail
                    if ok:
                        g["ok"], g["elapsed"] = True, round(self.clock() - killed, 3)
                        self._progress(spec, "gate %s passed after %.2fs" % (g["name"], g["elapsed"]))
                if all(g["ok"] for g in gates):
                    took = round(self.clock() - killed, 3)
                    extra.update(
                        restart_time=took,
                        gates=[{k: g[k] for k in ("name", "ok", "detail", "elapsed")} for g in gates],
                        tree=procs.tree_lines(self.snapshot(), sup_pid),
                    )
                    names = ", ".join(g["name"] for g in gates)
                    detail = "pid %d was killed (SIG%s); %s brought back pid %d in %.2fs%s" % (
                        old.pid,
                        signame,
                        sup["name"],
                        new.pid,
                        took,
                        " (%s ok)" % names if names else "",
                    )
                    return self._check("restart", spec, took <= timeout, detail, t0, **extra)
            if self.clock() >= deadline:
                extra["gates"] = [{k: g[k] for k in ("name", "ok", "detail", "elapsed")} for g in gates]
                detail = self._restart_timeout(old, new, gone, gates, sup, sup_pid, timeout, pattern)
                return self._check("restart", spec, False, detail, t0, **extra)
            self.sleep(POLL)

    def _under(self, table, sup_pid, pattern):
        """The instances matching pattern in the tree of the supervisor (pid sup_pid, which the
        state records as the service's): a process born under it is provably the service's (its
        tree, ownership.py), so the pattern is matched among those few processes alone, with no
        ownership domain and its marker scan of every process (this runs every 20 ms while
        verify.restart waits for the new child)."""
        inside = tree_pids(table, sup_pid) - {sup_pid}
        found = procs.pgrep({pid: table[pid] for pid in inside if pid in table}, pattern,
                            exclude=self.lc.protected)
        return instances(table, found)

    def _restart_timeout(self, old, new, gone, gates, sup, sup_pid, timeout, pattern):
        if new is None:
            still = "" if gone is not None else "; the old pid %d is still alive" % old.pid
            return (
                "no new process matching /%s/ appeared under %s (pid %d) within %gs after pid %d was killed%s"
                % (
                    pattern,
                    sup["name"],
                    sup_pid,
                    timeout,
                    old.pid,
                    still,
                )
            )
        pending = [g for g in gates if not g["ok"]]
        return "new pid %d appeared under %s, but within %gs %s" % (
            new.pid,
            sup["name"],
            timeout,
            "; ".join("%s: %s" % (g["name"], g.get("detail") or "not passed") for g in pending),
        )

    def _restart_gates(self, spec, watch, new_pid):
        """The service's own gates, re-run against the new process."""
        gates = []
        ready = spec.get("ready") or {}
        if watch is not None:
            matcher = LogMatcher(watch, ready["log"])

            def log_check(_table, _left):
                line, _last = matcher.check()
                if line is not None:
                    return True, "log line matched: %s" % line.strip()[:120]
                return False, "no line matching /%s/ written to %s since the kill" % (
                    ready["log"],
                    watch.path,
                )

            gates.append({"name": "log", "check": log_check})
        if spec.get("port") and ready.get("port", True):
            port = spec["port"]

            def port_check(table, _left):
                return port_gate(table, port, tree_pids(table, new_pid))

            gates.append({"name": "port", "check": port_check})
        for health in health_checks(spec, gating=True):

            def health_check(table, left, health=health):
                ok, detail, _ = http_check(health, self.lc.secrets, timeout=max(0.05, min(1.0, left)),
                                           owner_pids=tree_pids(table, new_pid), table=table)
                return ok, self.lc.secrets.redact(detail)

            gates.append({"name": health_label(health), "check": health_check})
        for g in gates:
            g.update(ok=False, detail="", elapsed=None)
        return gates

    # --- orphans -----------------------------------------------------------------------

    def orphans(self, spec, table=None):
        t0 = self.clock()
        table = self.snapshot() if table is None else table
        root, why = self.owner(spec)
        legit = tree_pids(table, root) if root is not None else set()
        if root is not None and spec.get("supervised_by"):
            reason = "outside %s's tree (pid %d)" % (spec["supervised_by"], root)
        elif root is not None:
            reason = "outside the tree of %s's recorded pid %d" % (spec["name"], root)
        else:
            reason = why
        owned, foreign = self._owned(spec, table)
        offenders = [offender(table, p, reason) for p in owned if p.pid not in legit]
        if offenders:
            detail = "%d process(es) matching /%s/ run outside %s's process tree: %s (%s)" % (
                len(offenders),
                spec["match"],
                spec["name"],
                describe_pids(table, [o["pid"] for o in offenders]),
                offenders[0]["reason"],
            )
        else:
            detail = "none outside its tree (pid %d)" % root if root is not None else "none running"
        detail += self._foreign(table, spec, foreign)
        return self._check("orphans", spec, not offenders, detail, t0, offenders=offenders)

    # --- health, heartbeat, instances -----------------------------------------------

    def health(self, spec):
        t0 = self.clock()
        checks = health_checks(spec)
        if not checks:
            return self._check("health", spec, False, "%s declares no health check" % spec["name"], t0)
        table = self.snapshot()
        root, _why = self.owner(spec)
        own = tree_pids(table, root) if root is not None else set()
        ok, detail, results = run_health_checks(checks, self.lc.secrets, owner_pids=own, table=table)
        ms = round((self.clock() - t0) * 1000, 1)
        return self._check("health", spec, ok, detail, t0, ms=ms, status=results[0]["status"],
                           url=results[0]["url"], checks=results)

    def heartbeat(self, spec):
        t0 = self.clock()
        hb = spec.get("heartbeat")
        if not hb:
            return self._check("heartbeat", spec, False, "%s declares no heartbeat" % spec["name"], t0)
        path = expand(hb["file"], self.lc.checkout)
        age, detail, torn = heartbeat_read(dict(hb, file=path))
        # a torn read (a writer that is not atomic) is read again: only a heartbeat torn on every
        # read for min(max_age, TORN_WAIT) seconds fails the check
        deadline = t0 + min(float(hb["max_age"]), TORN_WAIT)
        retried = False
        while torn and self.clock() < deadline:
            self.sleep(POLL)
            retried = True
            age, detail, torn = heartbeat_read(dict(hb, file=path))
        extra = {"path": path, "age": None if age is None else round(age, 3), "max_age": hb["max_age"]}
        if age is None:
            if torn and retried:
                detail += " (on every read for %.1fs)" % (self.clock() - t0)
            return self._check("heartbeat", spec, False, detail, t0, **extra)
        ok = age <= hb["max_age"]
        source = "field %r" % hb["field"] if hb.get("field") else "mtime"
        detail = "heartbeat %s (%s) is %.1fs old, max_age %gs%s" % (
            path,
            source,
            age,
            hb["max_age"],
            "" if ok else ": STALE",
        )
        return self._check("heartbeat", spec, ok, detail, t0, **extra)

    def instances(self, spec, table=None):
        t0 = self.clock()
        table = self.snapshot() if table is None else table
        owned, foreign = self._owned(spec, table)
        found = instances(table, owned)  # a master with its workers is one instance
        limit = spec.get("max_instances")
        ok = limit is None or len(found) <= limit
        detail = "%d instance(s) (%d process(es)) match%s" % (
            len(found),
            len(owned),
            " (max_instances = %d)" % limit if limit is not None else "",
        )
        if not ok:
            detail += ": too many matching /%s/: %s" % (
                spec["match"],
                describe_pids(table, [p.pid for p in found]),
            )
        detail += self._foreign(table, spec, foreign)
        return self._check("instances", spec, ok, detail, t0, count=len(found), max_instances=limit)

    # --- watch -------------------------------------------------------------------------

    def watch(self, specs, seconds=10.0, interval=1.0, min_mem_bytes=None):
        """Sample counts and MemAvailable every interval for `seconds`; stop early on a failure."""
        t0 = self.clock()
        n = max(1, int(round(float(seconds) / float(interval))))
        samples = []
        stopped_early = False
        for i in range(n + 1):
            wait = t0 + i * interval - self.clock()
            if wait > 0:
                self.sleep(wait)
            table = self.snapshot()
            sample = {
                "t": round(self.clock() - t0, 2),
                "counts": dict((s["name"], self._count(s, table)) for s in specs),
                "mem_available": procs.mem_available_bytes(),
            }
            samples.append(sample)
            self.emit({"event": "sample", "sample": sample})
            if sample_failed(samples, specs, min_mem_bytes):
                stopped_early = i < n
                break
        checks = judge_watch(samples, specs, min_mem_bytes)
        elapsed = round(self.clock() - t0, 3)
        for c in checks:
            c["elapsed"] = elapsed
            if stopped_early and not c["ok"]:
                c["detail"] += " (watch stopped early, at t=%.1fs of %gs)" % (samples[-1]["t"], seconds)
        return {"checks": checks, "samples": samples}

    def _count(self, spec, table):
        unit = self.lc.unit_spec(spec)
        if unit is not None:
            return self.lc.units().count(unit, table)
        return len(instances(table, self._owned(spec, table)[0]))

    # --- steps -------------------------------------------------------------------------

    def step(self, step, table=None):
        """One step of a plan: {"check": NAME, "service": SERVICE, ...options} -> one check."""
        spec = self.all_specs[step["service"]]
        kind = step["check"]
        unit = self.lc.unit_spec(spec) if kind in ("tree", "restart", "orphans") else None
        if unit is not None:  # systemd runs it: its cgroup is the evidence (ops/agent/systemd.py)
            units = self.lc.units()
            if kind == "restart":
                timeout = float(step.get("timeout") or 30.0)
                return units.check_restart(self, unit, step.get("signal") or "KILL", timeout)
            return getattr(units, "check_" + kind)(self, unit)
        if kind == "tree":
            return self.tree(spec)
        if kind == "restart":
            return self.restart(spec, step.get("signal") or "KILL", float(step.get("timeout") or 30.0))
        if kind == "orphans":
            return self.orphans(spec)
        if kind == "health":
            return self.health(spec)
        if kind == "heartbeat":
            return self.heartbeat(spec)
        if kind == "instances":
            return self.instances(spec)
        if kind in ("cmd", "file", "tcp"):  # checks beyond HTTP (hosts.toml: ops/probes.py)
            from . import probes

            return probes.run(self, spec, step)
        raise ValueError("unknown check %r" % kind)

    def run(self, steps):
        out = []
        for step in steps:
            c = self.step(step)
            self.emit({"event": "check", "check": c})
            out.append(c)
        return {"checks": out}


# --------------------------------------------------------------------------- agent ops


def _each(check):
    def op(args, emit):
        ch = Checks(args, emit)
        return ch.run([{"check": check, "service": s["name"]} for s in ch.specs])

    op.__name__ = "op_verify_" + check
    return op


op_verify_tree = _each("tree")
op_verify_orphans = _each("orphans")
op_verify_health = _each("health")
op_verify_heartbeat = _each("heartbeat")


def op_verify_restart(args, emit):
    ch = Checks(args, emit)
    steps = [
        {
            "check": "restart",
            "service": s["name"],
            "signal": args.get("signal"),
            "timeout": args.get("timeout"),
        }
        for s in ch.specs
    ]
    return ch.run(steps)


def op_verify_watch(args, emit):
    ch = Checks(args, emit)
    min_mem = args.get("min_mem_bytes")
    return ch.watch(
        ch.specs,
        seconds=float(args.get("seconds") or 10.0),
        interval=float(args.get("interval") or 1.0),
        min_mem_bytes=int(min_mem) if min_mem else None,
    )


def op_verify_all(args, emit):
    return Checks(args, emit).run(args.get("steps") or [])


OPS = {
    "verify_tree": op_verify_tree,
    "verify_restart": op_verify_restart,
    "verify_orphans": op_verify_orphans,
    "verify_health": op_verify_health,
    "verify_heartbeat": op_verify_heartbeat,
    "verify_watch": op_verify_watch,
    "verify_all": op_verify_all,
}
