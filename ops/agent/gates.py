"""Readiness gates and health checks, evaluated on the host.

Every gate answers from evidence produced by *this* start: log lines written after the recorded
offset, a port held by the service's own processes started after the start, a health answer.
"""

import os
import re
import time

from . import procs
from .secrets import Secrets


class _FileTail:
    """New complete lines of one open file from an offset; starts over at 0 if it is truncated
    (the size drops below the offset, or the bytes just before the offset change because it was
    truncated and written past the old offset between two reads).

    Content this tail finds already in place when it starts over at 0 (after a truncation, or
    for a file that replaced the log: see LogWatch) may be old content carried over by whoever
    rewrote the file (`tail -n 100 log > t && mv t log`, `sed -i`). Those bytes (the file's size
    when first seen) are read as a block, and everything up to the LAST line of that block that
    is a copy of a known old line (`old`: the lines the log held before the watch started, and
    every line read since) is dropped; what follows counts as new. Lines appended after that
    first sight always count. So a rotation to a new empty file passes on its first new line,
    while a file rewritten with old content never passes on an old "ready".
    """

    MARK = 64  # bytes before the offset remembered to detect truncate-and-regrow
    CHUNK = 4 << 20  # at most this much is read per call; the rest comes next call

    def __init__(self, f, offset, old=None, first_sight=False):
        self.f = f
        self.inode = os.fstat(f.fileno()).st_ino
        self.offset = offset
        n = min(self.MARK, offset)
        self.mark = os.pread(f.fileno(), n, offset - n) if n else b""
        self.partial = b""
        self.old = old if old is not None else set()
        self.carry_end = None  # bytes [0, carry_end) were in place at first sight
        self.carried = []
        self.carried_partial = None
        if first_sight:
            self._first_sight(os.fstat(f.fileno()).st_size)

    def _first_sight(self, size):
        self.offset, self.mark, self.partial, self.carried = 0, b"", b"", []
        self.carried_partial = None
        self.carry_end = size if (self.old and size) else None

    def _drop_copies(self, lines):
        last = -1
        for i, ln in enumerate(lines):
            if ln.strip() and hash(ln) in self.old:
                last = i
        return lines[last + 1 :]

    def lines(self):
        fd = self.f.fileno()
        size = os.fstat(fd).st_size
        n = len(self.mark)
        if size < self.offset or (n and os.pread(fd, n, self.offset - n) != self.mark):
            self._first_sight(size)
        if self.carry_end is not None and size < self.carry_end:
            self.carry_end = max(size, self.offset)  # the block shrank: judge what is left of it
        if size <= self.offset:
            return self._judge([]) if self.carry_end is not None and self.offset >= self.carry_end else []
        end = size if self.carry_end is None else min(size, self.carry_end)  # the block alone first
        data = os.pread(fd, min(end - self.offset, self.CHUNK), self.offset)
        self.offset += len(data)
        self.mark = (self.mark + data)[-self.MARK :]
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if self.carry_end is not None:
            self.carried.extend(lines)
            if self.offset < self.carry_end:
                return []  # the rest of the block comes next call
            return self._judge([])
        if self.carried_partial is not None and lines:
            if lines[0] == self.carried_partial:
                lines.pop(0)  # the copied unfinished line got its newline: still the old line
            self.carried_partial = None
        return self._new(lines)

    def _judge(self, lines):
        """The carried-over block is read whole: drop its copies, keep what follows."""
        lines, self.carried, self.carry_end = self._drop_copies(self.carried + lines), [], None
        if self.partial.strip() and hash(self.partial) in self.old:
            self.carried_partial = self.partial  # a copied unfinished line is not a new one
        return self._new(lines)

    def _new(self, lines):
        for ln in lines:
            if ln.strip():
                self.old.add(hash(ln))  # read once: a later copy of it is not new
        return [ln.decode("utf-8", "replace") for ln in lines]

    def pending(self):
        """The unfinished last line (None while a carried-over block is still being judged)."""
        if self.carry_end is not None or self.partial == self.carried_partial:
            return None
        return self.partial.decode("utf-8", "replace")

    def close(self):
        self.f.close()


def _old_lines(f, offset, window):
    """Hashes of the non-blank lines among the last `window` bytes before offset."""
    start = max(0, offset - window)
    data = os.pread(f.fileno(), offset - start, start)
    lines = data.split(b"\n")
    if start > 0 and lines:
        lines.pop(0)  # cut in the middle
    return {hash(ln) for ln in lines if ln.strip()}  # an unfinished last line is old content too


class LogWatch:
    """The lines appended to a log after the moment this watch was created, like ``tail -F``.

    The position is (inode, offset) at creation; only lines written after it are returned, in
    order per file. Truncation (copytruncate) is handled per file (see _FileTail). When the path
    comes to name another file (created, or the log rotated by rename), the new file is read from
    its start, and the old one is still read: whoever writes it (a service whose stdout is that
    file) may never reopen the path.

    A file that replaces the log (or a truncated log written again) is judged against the old
    content: the last OLD_WINDOW bytes before the start offset, and every line read since, are
    remembered (as hashes), and a leading block copied from them is not new (see _FileTail).
    A log that did not exist at creation has no old content: all of it is new.
    """

    KEEP_ROTATED = 4
    OLD_WINDOW = 1 << 20

    def __init__(self, path):
        self.path = path
        self.cur = None
        self.rotated = []
        self.old = set()
        try:
            f = open(path, "rb")  # noqa: SIM115 (held open: closed by close())
        except OSError:  # not there yet: everything it will contain is new
            return
        size = os.fstat(f.fileno()).st_size
        try:
            self.old = _old_lines(f, size, self.OLD_WINDOW)
        except OSError:
            self.old = set()
        self.cur = _FileTail(f, size, self.old)

    @property
    def inode(self):
        return self.cur.inode if self.cur is not None else None

    @property
    def offset(self):
        return self.cur.offset if self.cur is not None else 0

    def new_lines(self):
        """Complete lines written since the last call (an unfinished last line is kept back)."""
        out = []
        for tail in self.rotated:
            out.extend(tail.lines())
        if self.cur is not None:
            out.extend(self.cur.lines())
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            return out
        if self.cur is None or inode != self.cur.inode:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 (held open: closed by close())
            except OSError:
                return out
            if self.cur is not None:
                self.rotated.append(self.cur)
                while len(self.rotated) > self.KEEP_ROTATED:
                    self.rotated.pop(0).close()
            self.cur = _FileTail(f, 0, self.old, first_sight=True)
            out.extend(self.cur.lines())
        return out

    def pending_partial(self):
        p = self.cur.pending() if self.cur is not None else None
        return p or ""

    def pending_partials(self):
        """The unfinished last line of each file read (the current one and rotated ones)."""
        tails = self.rotated + ([self.cur] if self.cur is not None else [])
        return [p for p in (t.pending() for t in tails) if p]

    def close(self):
        for tail in self.rotated + ([self.cur] if self.cur is not None else []):
            tail.close()
        self.rotated, self.cur = [], None


class LogMatcher:
    """The log gate: the first line written since the watch was created that matches pattern.

    A last line without its newline counts too (a service printing `ready` without a newline,
    or with a buffered one), once it has stayed the same for one poll: a line still being
    written (`rea`... `ready-ish`) is not judged half way."""

    def __init__(self, watch, pattern):
        self.watch = watch
        self.pattern = pattern
        self.rx = re.compile(pattern)
        self.last = None
        self.partials = []

    def check(self):
        """(matched line or None, last line seen or None)."""
        for line in self.watch.new_lines():
            self.last = line
            if self.rx.search(line):
                return line, line
        partials = self.watch.pending_partials()
        steady = [p for p in partials if p in self.partials]
        self.partials = partials
        for p in steady:
            if self.rx.search(p):
                return p, p
        if partials:
            self.last = partials[-1]
        return None, self.last


def tail_lines(path, n, since=None):
    """The last n lines of a file (from offset `since` when given), decoded."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = since if since is not None and since <= size else 0
            chunk = 8192
            pos = size
            data = b""
            while pos > start and data.count(b"\n") <= n:
                step = min(chunk, pos - start)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:  # missing, a directory, not readable by this user: no lines, never an agent error
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:] if n else []


def _url_target(url):
    """(host, port) a URL points at (default ports by scheme); (None, None) when unparsable."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None, None
    return parts.hostname, port


def is_this_host(hostname):
    """True when a host name or address is this machine: loopback, or an address bound here."""
    import ipaddress
    import socket

    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(hostname, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, _type, _proto, _name, addr in infos:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if ip.is_loopback or ip.is_unspecified:
            return True
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr[0], 0))  # only an address of this machine can be bound
                return True
        except OSError:
            continue
    return False


def answer_owner_problem(url, owner_pids, table):
    """Why an answer from url cannot be the service's own ("" when it can, or when the URL
    points at another machine, whose processes this host cannot see): the port must be held by
    one of owner_pids (the service's own process tree)."""
    host, port = _url_target(url)
    if port is None or not is_this_host(host):
        return ""
    holders = procs.listening_pids(port)
    if holders & set(owner_pids):
        return ""
    if not holders:
        return "port %d is held by no process of this user (another user's?), not by this service" % port
    return "port %d is held by %s, not by this service's processes" % (port, describe_pids(table, holders))


def http_check(health, secrets=None, timeout=None, owner_pids=None, table=None):
    """One health request. Returns (ok, detail, status). Header values may come from host files.

    With owner_pids (the service's own process tree), an answer counts only when the port it
    came from on this host is held by one of them; else the detail names who answered. Redirects
    are never followed (a 3xx is the answer), and header_files values are only ever sent to this
    host."""
    secrets = secrets or Secrets()
    headers = dict(health.get("headers") or {})
    if health.get("header_files") and not is_this_host(_url_target(health["url"])[0]):
        return False, "%s: header_files are only sent to this host's own services, not to %s" % (
            health["url"], _url_target(health["url"])[0]), None
    for name, path in (health.get("header_files") or {}).items():
        value = secrets.read_file(path)
        if value is None:
            return False, "header %s: cannot read %s on the host (missing, unreadable or not UTF-8)" % (
                name, path), None
        if "\n" in value or "\r" in value:
            # http.client would refuse it with the value's repr in the message, which redaction
            # (of the exact value) does not catch: say so without the value
            return False, "header %s: %s holds more than one line; a header value is one line" % (
                name, path), None
        headers[name] = value
    import urllib.error  # imported on first use: it costs ~40 ms of every agent start-up
    import urllib.request

    req = urllib.request.Request(health["url"], headers=headers, method="GET")
    t = health.get("timeout") or 5.0
    if timeout is not None:
        t = max(0.05, min(t, timeout))
    expected = health.get("status") or 200
    try:
        with _opener().open(req, timeout=t) as resp:
            status = resp.status
            body = resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(65536).decode("utf-8", "replace")
        except Exception:
            body = ""
    except Exception as exc:  # connection refused, timeout, bad URL...
        reason = getattr(exc, "reason", exc)
        return False, "%s: %s" % (health["url"], reason), None
    if owner_pids is not None:
        problem = answer_owner_problem(health["url"], owner_pids, table or {})
        if problem:
            return False, "%s answered %d, but %s" % (health["url"], status, problem), status
    if status != expected:
        return False, "%s answered %d, expected %d" % (health["url"], status, expected), status
    pattern = health.get("body")
    if pattern and not re.search(pattern, body):
        return False, "%s body does not match /%s/" % (health["url"], pattern), status
    return True, "%s answered %d" % (health["url"], status), status


def health_checks(spec, gating=False):
    """A service's HTTP checks (`health_checks`, or the one `health`); gating: only those that
    gate its start (`gate = true`, the default)."""
    checks = spec.get("health_checks") or ([spec["health"]] if spec.get("health") else [])
    return [h for h in checks if not gating or h.get("gate", True)]


def health_label(health):
    """The gate's name: "health", or "health NAME" for a named one of several checks."""
    name = health.get("name") or "health"
    return "health" if name == "health" else "health " + name


def run_health_checks(checks, secrets, timeout=None, owner_pids=None, table=None):
    """(ok, detail, results): every check once, in order; ok only if all passed. The detail
    names the failing ones (or, when all passed, every one) by name."""
    results = []
    for h in checks:
        t = time.monotonic()
        ok, detail, status = http_check(h, secrets, timeout, owner_pids=owner_pids, table=table)
        results.append({"name": h.get("name") or "health", "ok": ok, "detail": secrets.redact(detail),
                        "status": status, "url": h["url"], "ms": round((time.monotonic() - t) * 1000, 1)})
    bad = [r for r in results if not r["ok"]]
    if len(results) == 1:
        detail = results[0]["detail"]
    else:
        detail = "; ".join("%s: %s" % (r["name"], r["detail"]) for r in (bad or results))
    return not bad, detail, results


_OPENER = []


def _opener():
    # no proxies: health checks talk to the host's own services
    if not _OPENER:
        import urllib.request

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                return None  # a 3xx is the answer: never follow it (nor send our headers on)

        _OPENER.append(urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect()))
    return _OPENER[0]


def tree_pids(table, root_pid, since_epoch=None):
    """The root and its descendants (alive), optionally only those started at/after since_epoch."""
    out = set()
    root = table.get(root_pid)
    if root is not None and root.alive:
        out.add(root_pid)
    for p in procs.descendants(table, root_pid):
        if p.alive:
            out.add(p.pid)
    if since_epoch is not None:
        out = {pid for pid in out if table[pid].start_epoch >= since_epoch - 1.0}
    return out


def port_gate(table, port, owner_pids):
    """(ok, detail): the port listens and a pid holding it belongs to the owner set."""
    holders = procs.listening_pids(port)
    if not holders:
        return False, "port %d: nothing listening" % port
    mine = holders & set(owner_pids)
    if mine:
        return True, "port %d held by pid %s" % (port, ",".join(str(p) for p in sorted(mine)))
    return False, "port %d held by %s, not by this service" % (port, describe_pids(table, holders))


def describe_pids(table, pids):
    parts = []
    for pid in sorted(pids):
        p = table.get(pid) or procs.get(pid)
        parts.append("pid %d (%s)" % (pid, _short(p.cmdline) if p else "?"))
    return ", ".join(parts) if parts else "an unknown process (not visible to this user)"


def _short(text, n=160):
    """Long command lines keep their head (the program) and their tail (its arguments)."""
    if len(text) <= n:
        return text
    head = (n - 3) // 3
    return text[:head] + "..." + text[-(n - 3 - head) :]


def child_gate(table, parent_pid, pattern, since_epoch=None):
    """(ok, detail, pids): processes matching pattern under parent_pid."""
    under = tree_pids(table, parent_pid, since_epoch)
    found = [p.pid for p in procs.pgrep(table, pattern) if p.pid in under and p.pid != parent_pid]
    if found:
        return True, "pid %s under %d" % (",".join(map(str, found)), parent_pid), found
    return False, "no process matching /%s/ under pid %d" % (pattern, parent_pid), []


def heartbeat_age(hb, now=None):
    """(age_seconds or None, detail)."""
    age, detail, _torn = heartbeat_read(hb, now)
    return age, detail


def heartbeat_read(hb, now=None):
    """(age_seconds or None, detail, torn): torn when the file is there but its content cannot be
    parsed (empty, half a JSON document: a writer that is not atomic may be half way)."""
    import json

    from .state import expand

    path = expand(hb["file"])
    now = time.time() if now is None else now
    try:
        if hb.get("field"):
            with open(path) as f:
                ts = float(json.load(f)[hb["field"]])
        else:
            ts = os.stat(path).st_mtime
    except FileNotFoundError:
        return None, "heartbeat %s does not exist" % path, False
    except OSError as exc:  # not readable by this user, a directory...
        return None, "heartbeat %s cannot be read: %s" % (path, exc.strerror or exc), False
    except (ValueError, KeyError, TypeError) as exc:
        return None, "heartbeat %s unreadable: %s" % (path, exc), True
    return now - ts, "heartbeat %s is %.1fs old" % (path, now - ts), False
