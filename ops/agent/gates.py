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
    truncated and written past the old offset between two reads)."""

    MARK = 64  # bytes before the offset remembered to detect truncate-and-regrow
    CHUNK = 4 << 20  # at most this much is read per call; the rest comes next call

    def __init__(self, f, offset):
        self.f = f
        self.inode = os.fstat(f.fileno()).st_ino
        self.offset = offset
        n = min(self.MARK, offset)
        self.mark = os.pread(f.fileno(), n, offset - n) if n else b""
        self.partial = b""

    def lines(self):
        fd = self.f.fileno()
        size = os.fstat(fd).st_size
        n = len(self.mark)
        if size < self.offset or (n and os.pread(fd, n, self.offset - n) != self.mark):
            self.offset, self.mark, self.partial = 0, b"", b""
        if size <= self.offset:
            return []
        data = os.pread(fd, min(size - self.offset, self.CHUNK), self.offset)
        self.offset += len(data)
        self.mark = (self.mark + data)[-self.MARK :]
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [ln.decode("utf-8", "replace") for ln in lines]

    def close(self):
        self.f.close()


class LogWatch:
    """The lines appended to a log after the moment this watch was created, like ``tail -F``.

    The position is (inode, offset) at creation; only lines written after it are returned, in
    order per file. Truncation (copytruncate) is handled per file (see _FileTail). When the path
    comes to name another file (created, or the log rotated by rename), the new file is read from
    its start, and the old one is still read: whoever writes it (a service whose stdout is that
    file) may never reopen the path.
    """

    KEEP_ROTATED = 4

    def __init__(self, path):
        self.path = path
        self.cur = None
        self.rotated = []
        try:
            f = open(path, "rb")  # noqa: SIM115 (held open: closed by close())
        except OSError:  # not there yet: everything it will contain is new
            return
        self.cur = _FileTail(f, os.fstat(f.fileno()).st_size)

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
            self.cur = _FileTail(f, 0)
            out.extend(self.cur.lines())
        return out

    def pending_partial(self):
        return self.cur.partial.decode("utf-8", "replace") if self.cur is not None else ""

    def close(self):
        for tail in self.rotated + ([self.cur] if self.cur is not None else []):
            tail.close()
        self.rotated, self.cur = [], None


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
        return None, "heartbeat %s does not exist" % path
    except OSError as exc:  # not readable by this user, a directory...
        return None, "heartbeat %s cannot be read: %s" % (path, exc.strerror or exc)
    except (ValueError, KeyError, TypeError) as exc:
        return None, "heartbeat %s unreadable: %s" % (path, exc)
    return now - ts, "heartbeat %s is %.1fs old" % (path, now - ts)
