"""Build steps on the host: run in the delivered code before the running services are stopped.

Each step is a shell command with a timeout, run in its own process group in the new tree (the
checkout, or a release directory). Its output (stdout and stderr, interleaved) is read as it comes
and only a bounded tail is kept, with the host's secrets redacted, so a chatty `pip install` never
fills the agent's memory and a token echoed by a script never leaves the host.
"""

import collections
import os
import select
import signal
import subprocess
import time

from .secrets import Secrets
from .state import expand

TAIL_LINES = 40  # lines of output kept per step
LINE_MAX = 500  # characters kept of one line
KILL_DRAIN = 5.0  # s to read what is left after a timed-out step's group is killed


def run_step(cmd, cwd, env, timeout, clock=time.monotonic):
    """Run one step; return {exit_code, timed_out, duration, tail} (tail: the last lines)."""
    t0 = clock()
    tail = collections.deque(maxlen=TAIL_LINES)
    try:
        p = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return {"exit_code": 127, "timed_out": False, "duration": 0.0,
                "tail": ["cannot run the step: %s" % (exc.strerror or exc)]}
    fd = p.stdout.fileno()
    partial = b""
    deadline = t0 + timeout
    timed_out = False
    eof = False
    while not eof:
        remaining = deadline - clock()
        if remaining <= 0 and not timed_out:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            deadline = clock() + KILL_DRAIN
            continue
        if remaining <= 0:
            break  # something that left the group still holds the pipe
        r, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            eof = True
            break
        partial += chunk
        *lines, partial = partial.split(b"\n")
        for ln in lines:
            tail.append(ln[:LINE_MAX * 4].decode("utf-8", "replace")[:LINE_MAX])
        if len(partial) > LINE_MAX * 4:
            partial = partial[-LINE_MAX * 4:]  # a line without end: keep its end
    if partial:
        tail.append(partial.decode("utf-8", "replace")[:LINE_MAX])
    p.stdout.close()
    if timed_out:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        code = p.wait(KILL_DRAIN)
    except subprocess.TimeoutExpired:
        p.kill()
        code = p.wait()
    return {"exit_code": code, "timed_out": timed_out, "duration": round(clock() - t0, 3),
            "tail": list(tail)}


def op_build(args, emit):
    """Run the build steps in order in `cwd`; stop at the first failure.

    args: host, cwd (the delivered tree), steps [{name, cmd, timeout, service}], all_services.
    A service's step gets the service's env and env_file. Returns {ok, steps: [...]} where each
    step has its redacted output tail."""
    cwd = expand(args["cwd"])
    specs = {s["name"]: s for s in args.get("all_services") or []}
    secrets = Secrets(cwd)
    for spec in specs.values():
        secrets.load_spec(spec)
    out = []
    ok = True
    for step in args.get("steps") or []:
        env = dict(os.environ)
        env["OPS_COMMIT"] = args.get("commit") or ""
        spec = specs.get(step.get("service") or "")
        if spec:
            env.update(spec.get("env") or {})
            if spec.get("env_file"):
                env.update(secrets.env_file(spec["env_file"])[0])
        emit({"event": "progress", "message": "build: %s" % step["name"]})
        r = run_step(step["cmd"], cwd, env, float(step.get("timeout") or 600))
        r["name"] = step["name"]
        r["ok"] = r["exit_code"] == 0 and not r["timed_out"]
        r["tail"] = [secrets.redact(ln) for ln in r["tail"]]
        out.append(r)
        if not r["ok"]:
            ok = False
            break
    if ok and args.get("mark_built"):  # layout = "releases": this release may be switched to
        from .releases import mark_built

        mark_built(cwd)
    return {"ok": ok, "steps": out}


OPS = {"build": op_build}
