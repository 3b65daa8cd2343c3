"""Checks beyond HTTP, run on the host as verify steps (declared in hosts.toml: ops/probes.py).

- cmd: run a command (string through sh, or argv) in the checkout (or ``cwd`` under it), its
  output in a temporary file (never whole in memory), bounded by ``timeout`` (its process group
  is killed after it); passes on the expected exit code and, if given, the ``output`` regex
  found in the last OUTPUT_SCAN bytes of its output. The output shown is a redacted tail.
- file: a path or glob under the checkout; passes when something matches and the newest match
  is young enough (``max_age``) and, with ``since_start``, modified after the service's recorded
  start.
- tcp: a TCP connection to host:port is accepted in time. When the port is the service's own
  declared port, the listener must also belong to the service's process tree (ownership.py):
  an answer from someone else's process never passes.

Python >= 3.8, stdlib only.
"""

import glob
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

from . import procs
from .gates import describe_pids, tree_pids
from .state import expand

KINDS = ("cmd", "file", "tcp")
OUTPUT_SCAN = 1024 * 1024  # bytes of a command's output the regex looks at (its end)
TAIL_LINES = 5
TAIL_CHARS = 600
DRAIN = 5.0  # s to wait for a killed command's group to go


def run(ch, spec, step):
    """One probe step for the Checks instance `ch` -> a check dict (redacted by ch._check)."""
    kind = step["check"]
    t0 = ch.clock()
    label = step.get("label") or kind
    if kind == "cmd":
        ok, detail, extra = run_cmd(step, ch.lc.checkout)
    elif kind == "file":
        ok, detail, extra = check_file(step, ch.lc.checkout, started_at(ch, spec))
    else:
        ok, detail, extra = check_tcp(step, ch, spec)
    extra["kind"] = kind
    return ch._check(label, spec, ok, detail, t0, **extra)


def _shown(target):
    if isinstance(target, str):
        return target
    return " ".join(target)


def _tail(text):
    lines = [ln for ln in text.splitlines() if ln.strip()][-TAIL_LINES:]
    out = " / ".join(ln.strip() for ln in lines)
    return out[-TAIL_CHARS:]


def run_cmd(step, checkout):
    target = step["target"]
    shown = _shown(target)
    cwd = expand(step["cwd"], checkout) if step.get("cwd") else checkout
    timeout = float(step.get("timeout") or 30.0)
    want = int(step.get("exit") or 0)
    t = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            p = subprocess.Popen(target, shell=isinstance(target, str), cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            why = exc.strerror or exc
            return False, "`%s` could not run in %s: %s" % (shown, cwd, why), {"exit_code": None}
        timed_out = False
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                code = p.wait(timeout=DRAIN)
            except subprocess.TimeoutExpired:
                code = None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_SCAN))
        text = out.read().decode("utf-8", "replace")
    extra = {"exit_code": code, "duration": round(time.monotonic() - t, 3), "output_bytes": size}
    tail = _tail(text)
    if timed_out:
        return False, "`%s` did not finish in %gs (its process group was killed)%s" % (
            shown, timeout, ": " + tail if tail else ""), extra
    if code != want:
        shown_tail = ": " + tail if tail else ""
        return False, "`%s` exited %s, expected %d%s" % (shown, code, want, shown_tail), extra
    rx = step.get("output")
    if rx:
        m = re.search(rx, text, re.MULTILINE)
        if m is None:
            return False, "`%s` exited %d but its output has no match for /%s/%s" % (
                shown, code, rx, ": " + tail if tail else " (no output)"), extra
        return True, "`%s` exited %d; output matches /%s/: %s" % (shown, code, rx, m.group(0)[:200]), extra
    return True, "`%s` exited %d" % (shown, code), extra


def started_at(ch, spec):
    """The wall-clock time the service (its top-level service) was last started by the tool."""
    top = ch.lc.top_of(spec, ch.all_specs)
    state = ch.lc.store.load(top["name"]) or {}
    if state.get("corrupt"):
        return None
    return state.get("started_at")


def _ago(seconds):
    return "%.1fs" % seconds


def check_file(step, checkout, started):
    pattern = expand(step["target"], checkout)
    matches = []
    for path in glob.glob(pattern):
        try:
            matches.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    extra = {"pattern": pattern, "matches": len(matches)}
    if not matches:
        return False, "nothing matches %s" % pattern, extra
    mtime, newest = max(matches)
    now = time.time()
    age = max(0.0, now - mtime)
    extra.update(path=newest, age=round(age, 3))
    what = "%s (newest of %d match(es)) was modified %s ago" % (newest, len(matches), _ago(age))
    max_age = step.get("max_age")
    stale = max_age is not None and age > float(max_age)
    if step.get("since_start"):
        if started is None:
            return False, "%s, but the service has no recorded start (start it with the tool)" % what, extra
        extra["started_at"] = started
        if mtime < started:
            return False, "%s, %s before the service's last start: not written by this run" % (
                what, _ago(started - mtime)), extra
        what += ", after the service's last start (%s ago)" % _ago(max(0.0, now - started))
    if stale:
        return False, "%s, max_age %gs: STALE" % (what, float(max_age)), extra
    return True, what, extra


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")


def check_tcp(step, ch, spec):
    host, _, port = step["target"].rpartition(":")
    port = int(port)
    timeout = float(step.get("timeout") or 2.0)
    extra = {"address": step["target"]}
    t = time.monotonic()
    try:
        sock = socket.create_connection((host or "127.0.0.1", port), timeout=timeout)
        sock.close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        return False, "%s does not answer: %s" % (step["target"], why), extra
    ms = round((time.monotonic() - t) * 1000, 1)
    extra["ms"] = ms
    if host in LOCAL_HOSTS and spec.get("port") == port:
        # the service's own port: the answer must come from the service's own tree
        table = ch.snapshot()
        root, why = ch.owner(spec)
        holders = procs.listening_pids(port)
        mine = holders & tree_pids(table, root) if root is not None else set()
        if not mine:
            held = describe_pids(table, holders) if holders else "a process this user cannot see"
            reason = why or "not by %s's process tree" % spec["name"]
            return False, "%s answers, but it is held by %s: %s" % (step["target"], held, reason), extra
        return True, "%s answers in %.1f ms, held by pid %s" % (
            step["target"], ms, ",".join(str(p) for p in sorted(mine))), extra
    return True, "%s answers in %.1f ms" % (step["target"], ms), extra
