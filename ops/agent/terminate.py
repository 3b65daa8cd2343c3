"""Stop services, on the host: supervisors first, then TERM to the group(s) and tree of what the
service owns by identity (recorded pid, its group even when its leader died, its marker), wait,
KILL; then sweep the pattern matches that are provably its own (ownership.py), and prove that
nothing of it is left and its port is free. A failed state write never aborts the signals.
"""

import os
import select
import signal
import time

from . import ownership, procs
from .gates import (
    describe_pids,
)
from .hostview import KILL_WAIT, POLL, HostView


def exit_fds(targets):
    """{pid: pidfd} for the targets ({pid: start time}) that are still those processes; {} where
    pidfds do not exist. The start time is read after the pidfd is opened, so a pidfd never
    stands for a process that took a dead target's pid."""
    fds = {}
    if not hasattr(os, "pidfd_open"):
        return fds
    for tpid, starttime in targets.items():
        try:
            fd = os.pidfd_open(tpid)
        except OSError:
            continue
        p = procs.get(tpid)
        if p is not None and p.alive and p.starttime == starttime:
            fds[tpid] = fd
        else:
            os.close(fd)
    return fds


def _signum(name):
    return getattr(signal, "SIG" + name)


class StopMixin(HostView):
    def stop(self, specs, all_specs):
        self.prepare(specs, all_specs)
        self.remember_secrets(specs, all_specs)
        results = []
        for spec in specs:
            unit = self.unit_spec(spec)
            if unit is not None:
                r = self.units().stop_one(unit, [all_specs[c] for c in spec.get("children") or []])
            elif spec.get("supervised_by"):
                r = self._verify_child_stopped(spec, all_specs)
            else:
                r = self.stop_one(spec, [all_specs[c] for c in spec.get("children") or []])
            r = self.secrets.redact_obj(r)
            self.emit({"event": "service", "phase": "stop", "result": r})
            results.append(r)
        ok = all(r["outcome"] != "failed" and not r.get("state_error") for r in results)
        return {"ok": ok, "services": results}


    def _verify_child_stopped(self, spec, all_specs):
        sup = all_specs[spec["supervised_by"]]
        sup_pid, _ = self.live_pid(sup)
        table = self.snapshot()
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
            self.note(name, "stopping", "stopping the supervisor pid %d (SIGTERM; it stops its child)" % pid)
            self._signal([], sup, signal.SIGTERM)
            signalled = [pid]
            self._wait_gone(sup, spec["stop_timeout"] + KILL_WAIT + 1.0)
        # everything the service owns, found by identity: the recorded process, its group (also
        # when its leader died), its tree, and processes carrying its marker
        if pid is not None:
            self.note(name, "stopping", "stopping pid %d: SIG%s, then SIGKILL after %gs"
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
                "detail": "still alive after SIGKILL: %s" % describe_pids(self.snapshot(), term["alive"]),
            }
        warnings = []
        if note and pid is None:
            w = self.mark_quietly(name, stale=True, stale_note=note)
            if w:
                warnings.append(w)
        # then what escaped identity but is provably its own (pattern + user + checkout)
        swept = self._sweep(spec, children, spec["stop_timeout"])
        w = self.mark_quietly(name, stopped=True, stopped_at=time.time(), stopped_by="user", gating=False)
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
            probe=self.probe_of(table),
            start_id=start_id,
        )
        return {pid: table[pid].starttime for pid in dom.members}, dom.groups


    def _terminate(self, spec, state, timeout, signame="TERM", start_id=None):
        """Signal the group(s) and the tree, wait, then KILL what is left (and whatever the group or
        tree gained meanwhile, e.g. a child respawned by a dying supervisor)."""
        name = spec["name"]
        table = self.snapshot()
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
        more, more_groups = self._targets(self.snapshot(), name, state, start_id)
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
        """The targets still alive (same pid and start time) when all are gone or at the timeout.
        Where the kernel offers it (Linux 5.3+, python 3.9+) the wait wakes the moment one exits
        (a pidfd becomes readable), instead of on the next 20 ms poll."""
        deadline = self.clock() + timeout
        fds = exit_fds(targets)
        try:
            while True:
                self.reap()
                alive = []
                for tpid, starttime in targets.items():
                    p = procs.get(tpid)
                    if p is not None and p.alive and p.starttime == starttime:
                        alive.append(tpid)
                if not alive or self.clock() >= deadline:
                    return alive
                watch = [fds[p] for p in alive if p in fds]
                if watch and len(watch) == len(alive):
                    select.select(watch, [], [], min(POLL, max(0.0, deadline - self.clock())))
                else:
                    self.sleep(POLL)
        finally:
            for fd in fds.values():
                os.close(fd)


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
        table = self.snapshot()
        found, foreign = self._owned_matches(top, specs, table)
        orphans = [{"pid": p.pid, "cmd": p.cmdline[:100]} for p in found.values()]
        if found:
            targets = {p.pid: p.starttime for p in found.values()}
            self._signal([], targets, signal.SIGTERM)
            alive = self._wait_gone(targets, stop_timeout)
            if alive:
                self._signal([], {p: targets[p] for p in alive}, signal.SIGKILL)
                self._wait_gone({p: targets[p] for p in alive}, KILL_WAIT)
        table = self.snapshot()
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

