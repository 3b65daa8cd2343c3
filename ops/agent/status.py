"""Status of services, on the host: running / starting / stopped / dead / backoff / fatal / unknown,
with pid, uptime, port holders and health. Only evidence owned by the service counts (ownership.py).
"""

import time

from . import hostlock, ownership, procs, supview
from .gates import (
    child_gate,
    describe_pids,
    health_checks,
    run_health_checks,
    tree_pids,
)
from .hostview import HostView


class StatusMixin(HostView):
    def status(self, specs, all_specs, health=True):
        self.prepare(specs, all_specs)
        self.remember_secrets(specs, all_specs)
        table = self.snapshot()
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
        unit = self.unit_spec(spec)
        if unit is not None:
            return self.units().status_one(unit, table, health)
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
                    or "pid %d is gone; last log: %s" % (state["pid"], " | ".join(self.tail(spec, n=1))),
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

