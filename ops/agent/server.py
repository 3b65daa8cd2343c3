"""The agent's main loop: JSON-line requests on stdin, JSON-line events on stdout.

Request:  {"id": 1, "op": "status", "args": {...}}
Events:   {"id": 1, "event": "progress", ...}  (any number)
          {"id": 1, "event": "result", "data": {...}}  or  {"id": 1, "event": "error", ...}
On start the agent says {"event": "hello", ...}. It serves requests one at a time until stdin
closes. Work already handed to it finishes even if the client goes away (writes then fail
quietly), so a dropped connection never leaves a phase half-done.
"""

import errno
import json
import os
import select
import signal
import sys
import time

from . import hostlock, procs
from .state import expand

# Start-up cost matters (every task pays it on every host): the modules an operation needs are
# imported when it first runs (lifecycle for status/start/stop, deployops and checks for theirs).

VERSION = os.environ.get("OPS_AGENT_VERSION", "dev")


class Channel:
    def __init__(self, out):
        self.out = out
        self.broken = False

    def send(self, obj):
        if self.broken:
            return
        try:
            self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.broken = True


def _specs(args):
    specs = args.get("services") or []
    all_specs = {s["name"]: s for s in (args.get("all_services") or specs)}
    return specs, all_specs


def op_ping(args, emit):
    return {"pong": True, "time": time.time()}


def op_held_locks(args, emit):
    """The locks this agent holds now (deploy locks, the host operation lock). A held agent
    (ops/persist.py) that still holds one when its client is gone is closed, never kept."""
    deployops = sys.modules.get(__package__ + ".deployops")
    return {"deploy": list(deployops._held_locks) if deployops is not None else [],
            "host": sorted(hostlock._held)}


def op_status(args, emit):
    from .lifecycle import Lifecycle

    specs, all_specs = _specs(args)
    lc = Lifecycle(args["host"], emit)
    return {
        "services": lc.status(specs, all_specs, health=args.get("health", True)),
        "boot_id": procs.boot_id(),
        "time": time.time(),
    }


def op_start(args, emit):
    from .lifecycle import Lifecycle

    specs, all_specs = _specs(args)
    return Lifecycle(args["host"], emit).start(specs, all_specs)


def op_stop(args, emit):
    from .lifecycle import Lifecycle

    specs, all_specs = _specs(args)
    return Lifecycle(args["host"], emit).stop(specs, all_specs)


def _log_secrets(args):
    """The secrets of the host's services (args["all_services"], args["service"]: their specs),
    redacted from the log lines sent back."""
    from .secrets import Secrets

    secrets = Secrets(expand(args.get("base") or "~"))
    for spec in [args.get("service")] + list(args.get("all_services") or []):
        if spec:
            secrets.load_spec(spec)
    return secrets


def op_logs(args, emit):
    from .gates import tail_lines

    path = expand(args["path"], expand(args.get("base") or "~"))
    secrets = _log_secrets(args)
    n = int(args.get("lines", 50))
    lines = [secrets.redact(ln) for ln in tail_lines(path, n)]
    out = {"path": path, "lines": lines, "exists": os.path.exists(path)}
    sup_log = (args.get("service") or {}).get("supervisor_log")
    if sup_log:  # the tool's supervisor's own lines, shown beside the service's
        sup_path = expand(sup_log, expand(args.get("base") or "~"))
        out["supervisor"] = {"path": sup_path, "exists": os.path.exists(sup_path),
                             "lines": [secrets.redact(ln) for ln in tail_lines(sup_path, n)]}
    return out


def op_follow(args, emit):
    """Stream new lines of a log until stdin closes (the client's Ctrl-C) or `seconds` pass."""
    from .gates import LogWatch

    path = expand(args["path"], expand(args.get("base") or "~"))
    watch = LogWatch(path)
    secrets = _log_secrets(args)
    deadline = time.monotonic() + float(args["seconds"]) if args.get("seconds") else None
    while deadline is None or time.monotonic() < deadline:
        for line in watch.new_lines():
            emit({"event": "line", "line": secrets.redact(line)})
        r, _, _ = select.select([sys.stdin], [], [], 0.1)
        if r:
            return {"path": path, "ended": "client"}
    return {"path": path, "ended": "timeout"}


def op_exec(args, emit):
    """Run a command on the host (argv list, or a string run by sh), bounded in time and output,
    its output redacted like log tails (ops/agent/execrun.py)."""
    from . import execrun

    return execrun.run(args, _log_secrets(args))


OPS = {
    "ping": op_ping,
    "held_locks": op_held_locks,
    "status": op_status,
    "start": op_start,
    "stop": op_stop,
    "logs": op_logs,
    "follow": op_follow,
    "exec": op_exec,
}

_EXTENSIONS = ["deployops", "checks", "build", "systemd", "fileops"]  # their OPS: merged in on first use


def find_op(name):
    """The function serving op ``name`` (importing the extension modules on the first op that is
    not a core one), or None."""
    fn = OPS.get(name)
    while fn is None and _EXTENSIONS:
        module = __import__(__package__ + "." + _EXTENSIONS.pop(0), fromlist=["OPS"])
        for key, value in module.OPS.items():
            OPS.setdefault(key, value)
        fn = OPS.get(name)
    return fn


# the operations that change what runs on the host: one at a time per host (hostlock.py)
MUTATING = frozenset(["start", "stop", "verify_restart", "unit_enable", "unit_persist"])


def needs_host_lock(op, args):
    if op in MUTATING:
        return not args.get("dry_run")
    return op == "verify_all" and any((s or {}).get("check") == "restart" for s in args.get("steps") or [])


def register(name, fn):
    OPS[name] = fn


def serve(inp=None, out=None):
    inp = inp or sys.stdin.buffer  # bytes: request lines, and the raw streams that follow some
    chan = Channel(out or sys.stdout)
    # The SSH session may go away mid-phase: finish the work, then exit at EOF.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    from . import loginenv

    env_delta = loginenv.at_start(inp)  # a wrapper's environment, replayed or measured (loginenv.py)
    chan.send(
        {
            "event": "hello",
            "env_delta": env_delta,
            "version": VERSION,
            "pid": os.getpid(),
            "python": "%d.%d.%d" % sys.version_info[:3],
            "executable": sys.executable,  # what `python` resolved to: the client execs it next time
            "boot_id": procs.boot_id(),
            "platform": sys.platform,
            "home": os.path.expanduser("~"),
        }
    )
    try:
        return _loop(inp, chan)
    finally:
        deployops = sys.modules.get(__package__ + ".deployops")
        if deployops is not None:  # it holds no lock if it never ran
            deployops.release_held_locks()
        hostlock.release_all()


def _loop(inp, chan):
    while True:
        line = inp.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
            rid = req.get("id")
            if "env" in req and "op" not in req:
                continue  # an environment for a directly started agent, read by another: ignore
        except ValueError:
            chan.send({"event": "error", "type": "protocol", "message": "bad JSON request"})
            continue
        stream_error = None
        if req.get("stream"):
            # N raw bytes follow the request line (a git bundle): copied to a file in bounded
            # chunks, never held in memory; consumed in full even if the file cannot be written
            stream_error = _receive(inp, int(req["stream"]), req.setdefault("args", {}))
        op = req.get("op")
        fn = find_op(op) if isinstance(op, str) else None
        if fn is None:
            chan.send(
                {"id": rid, "event": "error", "type": "protocol", "message": "unknown op %r" % req.get("op")}
            )
            continue

        def emit(event, rid=rid):
            event = dict(event)
            event["id"] = rid
            chan.send(event)

        try:
            if stream_error is not None:
                raise stream_error
            args = req.get("args") or {}
            locked = None
            if needs_host_lock(op, args):
                host = args.get("host") or {}
                root = os.path.realpath(expand(host["state_dir"]))
                if not hostlock.held(root):  # a deploy holds it already for its whole run
                    wait = float(args.get("lock_wait") or host.get("lock_wait") or 0)
                    hostlock.acquire(root, op, wait=wait, emit=emit)
                    locked = root
            try:
                data = fn(args, emit)
            finally:
                if locked:
                    hostlock.release(locked)
            chan.send({"id": rid, "event": "result", "data": data})
        except Exception as exc:  # report, keep serving
            import traceback

            event = {
                "id": rid,
                "event": "error",
                "type": type(exc).__name__,
                "message": str(exc),
                "trace": traceback.format_exc(limit=5),
            }
            event.update(os_error_fields(exc))
            from .secrets import redact_error

            chan.send(redact_error(event, req.get("args")))
        finally:
            path = (req.get("args") or {}).get("_stream")
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass


STREAM_CHUNK = 256 * 1024


def _receive(inp, size, args):
    """Copy `size` bytes of the request's stream from inp to a temp file (args["_stream"]), in
    chunks. Returns None, or the OSError that stopped the copy (the rest is read and dropped so the
    next request line is where it should be)."""
    import tempfile

    from .state import WriteFailed, expand

    state_dir = (args.get("host") or {}).get("state_dir")
    error, f = None, None
    try:
        d = expand(state_dir) if state_dir else None
        if d:
            os.makedirs(d, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".ops-stream-", dir=d)
        args["_stream"] = path
        f = os.fdopen(fd, "wb")
    except OSError as exc:
        error = WriteFailed(state_dir or "the temp directory", "the received bundle", exc)
    left = size
    while left > 0:
        chunk = inp.read(min(STREAM_CHUNK, left))
        if not chunk:
            error = error or EOFError("the stream ended %d bytes early" % left)
            break
        left -= len(chunk)
        if f is not None and error is None:
            try:
                f.write(chunk)
            except OSError as exc:
                error = WriteFailed(args.get("_stream"), "the received bundle", exc)
    if f is not None:
        try:
            f.close()
        except OSError as exc:
            error = error or WriteFailed(args.get("_stream"), "the received bundle", exc)
    return error


def os_error_fields(exc):
    """A system error on the host (disk full, permission, read-only) is not a bug in the agent:
    the client reports it as what it is, naming the path and what was not written."""
    if not isinstance(exc, OSError):
        return {}
    return {
        "os_error": True,
        "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
        "strerror": exc.strerror or str(exc),
        "path": exc.filename,
        "what": getattr(exc, "what", None),
    }


def main(version=None):
    global VERSION
    if version:
        VERSION = version
    if len(sys.argv) > 1 and sys.argv[1] == "supervise":
        from . import supervisor

        sys.exit(supervisor.main(sys.argv[2:]))
    code = serve()
    # Its work is done and written (locks released, state saved, replies flushed): leave without
    # the interpreter's teardown, which the client's close would otherwise wait for (~5-10 ms).
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
