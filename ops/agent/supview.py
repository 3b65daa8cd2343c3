"""What the agent reads from the tool's supervisor of a service (supervisor.py): its state file
and its own log, turned into status fields and failed-start details. Pure functions of that data."""

import os

from .gates import tail_lines


def codes(values):
    return ", ".join(str(c) for c in values or [])


def fatal_detail(sup, name):
    """Why a supervisor gave up, and how to reset it."""
    if sup.get("fatal_reason") == "max_restarts":
        return "restart cap: restarted %d times (max_restarts %s; exit codes %s); `start %s` resets it" % (
            sup.get("restarts") or 0, sup.get("max_restarts"), codes(sup.get("exit_codes")), name)
    return "crash loop: %d short runs (exit codes %s); `start %s` resets it" % (
        len(sup.get("short_runs") or []), codes(sup.get("short_runs")), name)


def ended_during_start(sup, name, pending):
    """(detail, exit_code) when the supervisor itself ended before the gates passed: the service's
    own exit codes, not the supervisor's exit 0. None when it did not end on its own."""
    if not sup or sup.get("state") not in ("fatal", "done"):
        return None
    exit_codes = sup.get("exit_codes") or sup.get("short_runs") or []
    last = exit_codes[-1] if exit_codes else sup.get("last_exit")
    if sup["state"] == "done":
        return "the service exited with code 0 before %s passed (restart = on-failure: done)" % pending, 0
    return "the service exited %d time(s) before %s passed (exit codes %s); its supervisor gave up: %s" % (
        len(exit_codes), pending, codes(exit_codes), fatal_detail(sup, name)), last


def status_fields(sup):
    """Extra status fields for a supervised service."""
    out = {"exit_codes": sup.get("exit_codes"), "supervisor_log": sup.get("supervisor_log")}
    if sup.get("port_holder"):
        out["port_holder"] = sup["port_holder"]
    errors = sup.get("write_errors") or {}
    if errors:
        out["write_errors"] = errors
    if sup.get("supervisor_log"):
        last = tail_lines(sup["supervisor_log"], 1)
        out["supervisor_last"] = last[0] if last else None
    return out


def write_error_note(sup):
    """'supervisor could not write its log 3 times (No space left on device)', or ''."""
    errors = (sup or {}).get("write_errors") or {}
    parts = ["its %s %d time(s) (%s)" % (what, e.get("count", 0), e.get("last"))
             for what, e in sorted(errors.items())]
    return "supervisor could not write " + ", ".join(parts) if parts else ""


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
