"""One mutating operation per host at a time: an exclusive flock on the state directory.

Stdlib only, python3.8+. start, stop, restart, verify.restart, deploy and rollback take it; the
kernel drops it when the agent dies, so a vanished client never leaves it held.
A second operation waits up to its ``lock_wait`` or is refused with the holder's description.
start, stop and verify.restart hold it for their request; a deploy from its lock to its unlock
(or until its agent exits).
Read-only operations (status, logs, the other checks) never take it.
"""

import errno
import fcntl
import json
import os
import time

LOCK_NAME = "ops.lock"
POLL = 0.05

_held = {}  # lock path -> open file object; held until this process exits


class HostBusy(Exception):
    """Another operation holds the host's lock. The client shows it as a held lock (exit 4)."""

    def __init__(self, message, holder=None):
        Exception.__init__(self, message)
        self.holder = holder or {}


def lock_path(state_root):
    return os.path.join(state_root, LOCK_NAME)


def read_holder(state_root):
    """What the current holder wrote about itself ({} when unknown)."""
    try:
        with open(lock_path(state_root)) as f:
            data = json.loads(f.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(holder):
    if not holder:
        return "another operation (its holder did not describe itself)"
    since = holder.get("since")
    age = " for %.0fs" % max(0.0, time.time() - since) if isinstance(since, (int, float)) else ""
    return "%s (pid %s, user %s%s)" % (
        holder.get("op") or "an operation", holder.get("pid"), holder.get("user") or "?", age)


def held(state_root):
    return lock_path(state_root) in _held


def is_locked(state_root):
    """True when some process holds the host's lock now (this one included)."""
    if held(state_root):
        return True
    try:
        fd = os.open(lock_path(state_root), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def acquire(state_root, op, wait=0.0, emit=None, clock=time.monotonic, sleep=time.sleep):
    """Take the host's lock for `op` (no-op when this process holds it already).

    Waits up to `wait` seconds for the holder to finish; raises HostBusy naming the holder."""
    path = lock_path(state_root)
    if path in _held:
        return
    os.makedirs(state_root, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 (held open until the agent exits)
    deadline = clock() + max(0.0, float(wait or 0.0))
    told = False
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                f.close()
                raise
        if clock() >= deadline:
            f.close()
            holder = read_holder(state_root)
            raise HostBusy(
                "the host is busy: %s holds its lock (%s)" % (describe(holder), path), holder)
        if emit is not None and not told:
            emit({"event": "progress", "message": "waiting for %s" % describe(read_holder(state_root))})
            told = True
        sleep(POLL)
    record = {
        "op": op,
        "pid": os.getpid(),
        "user": os.environ.get("OPS_CLIENT_USER") or os.environ.get("USER") or str(os.geteuid()),
        "since": time.time(),
    }
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(record))
        f.flush()
    except OSError:
        pass  # a full disk: the lock is held all the same; only its description is missing
    _held[path] = f


def release(state_root):
    """Let the host's lock go (no-op when this process does not hold it)."""
    f = _held.pop(lock_path(state_root), None)
    if f is not None:
        try:
            f.close()
        except OSError:
            pass


def release_all():
    for path, f in list(_held.items()):
        try:
            f.close()
        except OSError:
            pass
        del _held[path]
