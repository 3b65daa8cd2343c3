"""The agent's `exec` op: run one command on the host, bounded in time AND in output.

- Output is read as it comes (select on both pipes) into a bounded tail per stream: a test run that
  prints gigabytes never sits whole in the agent's memory nor in one JSON line. Only the last
  ``return_bytes`` of each stream travel back; the last ``keep_bytes`` can be saved in a file on the
  host (``save``), whose path is returned, for when the short tail is not enough.
- Everything sent back or saved is redacted: the secrets of the host's services (env_file values,
  health header files) become ``***``, as in log tails. A tail cut in the middle of a line drops
  that partial first line, so a secret cut in two never leaves a recognisable half.
- The command runs in its own session (process group). Its verdict is ITS exit: when it has exited
  but a background child still holds the output pipes open (``sleep 300 &`` in a wrapper, a daemon
  a test forgot), the agent reads for ``linger`` more seconds, then kills that group (it is the one
  this call created: the command's pid stays unreaped, so the group id cannot be reused meanwhile)
  and reports ``lingering``: a passing run is never turned into a timeout by it.
- On timeout the group is killed; what is still read within EXEC_DRAIN is kept.

Python >= 3.8, stdlib only.
"""

import os
import select
import signal
import subprocess
import threading
import time

from .state import expand

EXEC_DRAIN = 5.0  # s to read what is left of a timed-out command's output after its group is killed
LINGER = 2.0  # s to keep reading after the command exited, before its leftover group is killed
KEEP_BYTES = 256 * 1024  # per stream, in memory and in the saved file
RETURN_BYTES = 32 * 1024  # per stream, sent back


class Tail:
    """The last ``limit`` bytes written to it, and how many bytes were written in all."""

    def __init__(self, limit):
        self.limit = max(1, int(limit))
        self.buf = bytearray()
        self.total = 0

    def add(self, data):
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.limit:  # trim in batches, not on every read
            del self.buf[: len(self.buf) - self.limit]

    def text(self, limit=None, redact=None):
        """The tail as text (at most ``limit`` bytes), redacted; a cut partial first line dropped."""
        limit = min(limit or self.limit, self.limit)
        data = bytes(self.buf[-limit:]) if len(self.buf) > limit else bytes(self.buf)
        cut = len(data) < self.total
        text = data.decode("utf-8", "replace")
        if cut:
            nl = text.find("\n")
            text = text[nl + 1 :] if nl >= 0 else ""
        return redact(text) if redact else text

    @property
    def truncated(self):
        return self.total > self.limit


def _exited(p):
    """True once the command has exited, WITHOUT reaping it where the platform allows: while it is
    an unreaped zombie its pid (= its group id) cannot be reused, so signalling the group stays
    safe. Without os.waitid (older macOS Pythons) it is reaped: the group id is then only as safe as
    the few milliseconds until the kill."""
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return p.poll() is not None
    try:
        info = waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except OSError:
        return False


def _feed_stdin(p, data):
    try:
        p.stdin.write(data)
    except OSError:
        pass
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass


def run(args, secrets):
    """args: cmd (argv list, or a string run by sh), cwd, env, timeout, stdin, keep_bytes,
    return_bytes, linger, save (a path on the host for the kept tail)."""
    cmd = args["cmd"]
    cwd = expand(args["cwd"]) if args.get("cwd") else None
    env = dict(os.environ)
    env.update(args.get("env") or {})
    timeout = float(args.get("timeout") or 300)
    linger = float(args.get("linger", LINGER))
    keep = int(args.get("keep_bytes") or KEEP_BYTES)
    give = int(args.get("return_bytes") or RETURN_BYTES)
    stdin = (args.get("stdin") or "").encode()
    t = time.monotonic()
    try:
        p = subprocess.Popen(
            cmd,
            shell=isinstance(cmd, str),
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return {"exit_code": 127, "stdout": "", "stderr": secrets.redact(str(exc)), "duration": 0.0,
                "timed_out": False, "lingering": False, "stdout_bytes": 0, "stderr_bytes": 0,
                "truncated": False, "saved": None}
    if stdin:
        threading.Thread(target=_feed_stdin, args=(p, stdin), daemon=True).start()
    tails = {p.stdout.fileno(): Tail(keep), p.stderr.fileno(): Tail(keep)}
    out_tail, err_tail = tails[p.stdout.fileno()], tails[p.stderr.fileno()]
    open_fds = set(tails)
    deadline = t + timeout
    timed_out = lingering = False
    exited_at = None
    stop_reading_at = None  # after a kill: read what is left for EXEC_DRAIN at most
    while open_fds:
        now = time.monotonic()
        if stop_reading_at is None:
            if exited_at is None and _exited(p):
                exited_at = now
            if exited_at is not None and now - exited_at >= linger:
                # the command is done; what holds its output is a leftover of its own group
                lingering = True
                _killpg(p.pid)
                stop_reading_at = now + EXEC_DRAIN
            elif exited_at is None and now >= deadline:
                timed_out = True
                _killpg(p.pid)
                stop_reading_at = now + EXEC_DRAIN
        elif now >= stop_reading_at:
            break  # something that left the group (setsid) still holds the pipes: keep what was read
        wait = 0.1
        ready, _, _ = select.select(list(open_fds), [], [], wait)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if data:
                tails[fd].add(data)
            else:
                open_fds.discard(fd)
    p.stdout.close()
    p.stderr.close()
    if not timed_out and exited_at is None and not _exited(p):
        # both pipes closed (the command closed them) while it still runs: wait for it, bounded
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(p.pid)
    if lingering or timed_out:
        _killpg(p.pid)  # the group again, before reaping, in case the first signal raced a fork
    code = p.wait()
    result = {
        "exit_code": code,
        "stdout": out_tail.text(give, secrets.redact),
        "stderr": err_tail.text(give, secrets.redact),
        "timed_out": timed_out,
        "lingering": lingering,
        "stdout_bytes": out_tail.total,
        "stderr_bytes": err_tail.total,
        "truncated": out_tail.total > give or err_tail.total > give,
        "duration": round(time.monotonic() - t, 3),
        "saved": None,
    }
    if args.get("save"):
        result["saved"] = _save(expand(args["save"]), out_tail, err_tail, secrets)
    return result


def _save(path, out_tail, err_tail, secrets):
    """The kept tails (redacted) in a file on the host: stdout, then stderr after a marker line."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = "%s.tmp.%d" % (path, os.getpid())
        with open(tmp, "w", encoding="utf-8") as f:
            if out_tail.truncated:
                f.write("[... first %d bytes of stdout not kept ...]\n" % (out_tail.total - out_tail.limit))
            f.write(out_tail.text(redact=secrets.redact))
            if err_tail.total:
                f.write("\n--- stderr ---\n")
                f.write(err_tail.text(redact=secrets.redact))
        os.replace(tmp, path)
        return path
    except OSError:
        return None
