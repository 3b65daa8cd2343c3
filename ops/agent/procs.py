"""Process table, process identity and listening ports, on the host.

Stdlib only, Python >= 3.8, self-contained (imports no sibling module).

Linux is read through /proc. Hosts without /proc (macOS) fall back to ``ps``/``lsof``/``vm_stat``,
always run with ``LC_ALL=C`` and a timeout so the output does not depend on the locale and a
wedged command cannot hang the agent.

A process the tool owns is identified by pid + start time + boot id (``identity`` /
``same_process``), so a reused pid is never mistaken for it. ``pgrep`` finds processes by command
line like ``pgrep -f`` but never returns the caller or its ancestors (the SSH session that runs
the agent).

The pure parsers (``parse_stat``, ``parse_tcp_line``, ``parse_ps_line``, ``parse_lstart``, ...)
take text and are unit tested with literal strings; the thin readers around them touch the system.
"""

from __future__ import annotations

import os
import re
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # the agent does not import typing (~5 ms) at run time
    from typing import Dict, Iterable, List, Optional, Set, Tuple

__all__ = [
    "USE_PROC",
    "Proc",
    "ancestors",
    "boot_id",
    "bracket_pattern",
    "children_map",
    "descendants",
    "get",
    "identity",
    "listening_pids",
    "mem_available_bytes",
    "parse_btime",
    "parse_lstart",
    "parse_meminfo",
    "parse_ps_line",
    "parse_stat",
    "parse_status_uid",
    "parse_tcp_line",
    "parse_vm_stat",
    "listen_inodes",
    "pgrep",
    "port_accepts",
    "port_listening",
    "same_process",
    "self_and_ancestors",
    "snapshot",
    "split_cmdline",
    "tree_lines",
]

# None: use /proc when it exists. Tests (or a caller) may force the ps fallback with False.
USE_PROC = None  # type: Optional[bool]

CMD_TIMEOUT = 5.0
TCP_LISTEN = "0A"
_PS_COLS = "pid=,ppid=,pgid=,{sid}=,uid=,stat=,lstart=,args="
_ps_sid_col = "sess"  # switched to "pgid" once if this ps does not know "sess"

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_WEEKDAYS = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}


class Proc(object):
    """One process: pid, parent, group, session, uid, state, start time and argv.

    Immutable and compared by value like a frozen dataclass (a hand-written class: the agent does
    not import dataclasses, ~10 ms of its start-up). ``argv`` and ``uid`` may be given, or left
    ``None`` for a process read from /proc: then they are read on first use (``/proc/PID/cmdline``,
    ``/proc/PID/status``), so a snapshot costs one stat read per process and only the processes a
    check looks at cost more. A process that ended before that read reads as gone (state "X",
    argv ("[comm]",), uid -1). What a lazy read finds is acted on only once ``confirm()`` has
    read the stat line again and found the same start time (pid reuse: another process's command
    line or uid is never taken for this one's): ``pgrep`` confirms every match, the ownership
    probe every marker it finds.
    """

    __slots__ = ("pid", "ppid", "pgid", "sid", "_uid", "state", "starttime", "start_epoch", "_argv",
                 "_comm", "_confirmed")

    def __init__(self, pid, ppid, pgid, sid, uid, state, starttime, start_epoch, argv, comm=""):
        # type: (int, int, int, int, Optional[int], str, str, float, Optional[Tuple[str, ...]], str) -> None
        lazy = argv is None or uid is None
        for name, value in (("pid", pid), ("ppid", ppid), ("pgid", pgid), ("sid", sid), ("_uid", uid),
                            ("state", state), ("starttime", starttime), ("start_epoch", start_epoch),
                            ("_argv", None if argv is None else tuple(argv)), ("_comm", comm),
                            ("_confirmed", None if lazy else True)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("Proc is immutable (cannot set %r)" % name)

    def _fields(self):
        return (self.pid, self.ppid, self.pgid, self.sid, self.uid, self.state, self.starttime,
                self.start_epoch, self.argv)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        names = ("pid", "ppid", "pgid", "sid", "uid", "state", "starttime", "start_epoch", "argv")
        return "Proc(%s)" % ", ".join("%s=%r" % kv for kv in zip(names, self._fields()))  # noqa: B905 (py3.8)

    def confirm(self):
        # type: () -> bool
        """True when what was read about this process after its stat line is its own: its stat
        line, read again now, has the same start time. Always True for a process given whole."""
        if self._confirmed is None:
            try:
                fields = _read_text("/proc/%d/stat" % self.pid).rpartition(")")[2].split()
                same = len(fields) >= 20 and fields[19] == self.starttime
            except OSError:
                same = False
            if not same:
                object.__setattr__(self, "state", "X")
            object.__setattr__(self, "_confirmed", same)
        return self._confirmed

    def _gone(self):
        object.__setattr__(self, "state", "X")
        object.__setattr__(self, "_confirmed", False)

    @property
    def argv(self):
        # type: () -> Tuple[str, ...]
        """("[comm]",) for kernel threads or an unreadable cmdline."""
        if self._argv is None:
            try:
                argv = split_cmdline(_read_bytes("/proc/%d/cmdline" % self.pid))
            except PermissionError:  # hidepid; the stat line still identifies it
                argv = ()
            except OSError:  # gone
                self._gone()
                argv = ()
            object.__setattr__(self, "_argv", argv or ("[%s]" % self._comm,))
        return self._argv

    @property
    def uid(self):
        # type: () -> int
        if self._uid is None:
            try:
                uid = _uid_of(self.pid)
            except OSError:
                self._gone()
                uid = -1
            object.__setattr__(self, "_uid", uid)
        return self._uid

    @property
    def cmdline(self):
        # type: () -> str
        """What ``pgrep -f`` matches against."""
        return " ".join(self.argv)

    @property
    def alive(self):
        # type: () -> bool
        """False for a zombie (or a dead-but-listed 'X') process."""
        return self.state not in ("Z", "X")


# ---------------------------------------------------------------- pure parsers


def parse_stat(
    text: str,
    argv: Optional[Iterable[str]] = (),
    uid: Optional[int] = -1,
    btime: float = 0.0,
    clk_tck: int = 100,
) -> Proc:
    """Parse the text of /proc/<pid>/stat into a Proc.

    The comm field sits in parentheses and may itself contain spaces and ')', so the fields are
    split after the *last* ')'. An empty argv becomes ("[comm]",). ``argv``/``uid`` None: read
    from /proc when first used (see Proc). Raises ValueError when the text is not a stat line.
    """
    head, sep, tail = text.rpartition(")")
    pid_text, paren, comm = head.partition("(")
    if not sep or not paren:
        raise ValueError("not a /proc/<pid>/stat line: %r" % text[:80])
    fields = tail.split()  # fields[0] is field 3 (state) of proc(5)
    if len(fields) < 20:
        raise ValueError("short /proc/<pid>/stat line: %r" % text[:80])
    ticks = int(fields[19])  # field 22: starttime, clock ticks since boot
    if argv is not None:
        argv = tuple(argv) or ("[%s]" % comm,)
    return Proc(
        pid=int(pid_text),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        uid=uid,
        state=fields[0][:1],
        starttime=str(ticks),
        start_epoch=btime + ticks / float(clk_tck),
        argv=argv,
        comm=comm,
    )


def split_cmdline(raw: bytes) -> Tuple[str, ...]:
    """/proc/<pid>/cmdline bytes -> argv tuple (empty for kernel threads and zombies)."""
    raw = raw.rstrip(b"\0")
    if not raw:
        return ()
    return tuple(a.decode("utf-8", "replace") for a in raw.split(b"\0"))


def parse_status_uid(text: str) -> Optional[int]:
    """The effective uid from /proc/<pid>/status ("Uid:\\treal\\teffective\\tsaved\\tfs")."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            if len(parts) >= 3:
                return int(parts[2])
    return None


def parse_btime(text: str) -> float:
    """Boot time (epoch seconds) from the text of /proc/stat."""
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime line in /proc/stat")


def parse_tcp_line(line: str) -> Optional[Tuple[int, str, int]]:
    """One line of /proc/net/tcp or tcp6 -> (local port, state hex like "0A", socket inode).

    None for the header or a malformed line.
    """
    parts = line.split()
    if len(parts) < 10 or ":" not in parts[1]:
        return None
    try:
        port = int(parts[1].rpartition(":")[2], 16)
        inode = int(parts[9])
    except ValueError:
        return None
    return port, parts[3].upper(), inode


def listen_inodes(text: str, port: int) -> Set[int]:
    """Socket inodes LISTENing on ``port`` in the text of /proc/net/tcp or tcp6."""
    inodes = set()
    for line in text.splitlines():
        entry = parse_tcp_line(line)
        if entry and entry[0] == port and entry[1] == TCP_LISTEN and entry[2]:
            inodes.add(entry[2])
    return inodes


def _has_listener(text: str, port: int) -> bool:
    for line in text.splitlines():
        entry = parse_tcp_line(line)
        if entry and entry[0] == port and entry[1] == TCP_LISTEN:
            return True
    return False


def parse_lstart(text: str) -> float:
    """``ps -o lstart=`` text -> epoch seconds (local time, via time.mktime).

    Accepts "Mon Jan 26 10:00:00 2026" and "Mon 26 Jan 10:00:00 2026" with any spacing
    (English names, as printed under LC_ALL=C). Raises ValueError on anything else.
    """
    parts = text.split()
    if len(parts) != 5:
        raise ValueError("not a ps lstart: %r" % text)
    weekday, a, b, hms, year = parts
    if weekday.lower() not in _WEEKDAYS:
        raise ValueError("bad weekday in ps lstart: %r" % text)
    if a.lower() in _MONTHS and b.isdigit():
        month, day = _MONTHS[a.lower()], int(b)
    elif b.lower() in _MONTHS and a.isdigit():
        month, day = _MONTHS[b.lower()], int(a)
    else:
        raise ValueError("bad day/month in ps lstart: %r" % text)
    clock = hms.split(":")
    if len(clock) != 3 or not all(c.isdigit() for c in clock):
        raise ValueError("bad time in ps lstart: %r" % text)
    if len(year) != 4 or not year.isdigit():
        raise ValueError("bad year in ps lstart: %r" % text)
    hour, minute, second = (int(c) for c in clock)
    import datetime  # only without /proc (macOS): datetime validates the ranges (mktime would
    # silently normalise "Feb 31")

    moment = datetime.datetime(int(year), month, day, hour, minute, second)
    return time.mktime(moment.timetuple())


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(text, 16)  # macOS may print the session as a hex value
    except ValueError:
        return default


def parse_ps_line(line: str) -> Optional[Proc]:
    """One line of ``ps -o pid=,ppid=,pgid=,sess=,uid=,stat=,lstart=,args=`` -> Proc.

    lstart takes 5 whitespace-separated fields; args is the rest, split on whitespace (ps does
    not preserve argv boundaries). starttime is the start epoch as an int string.
    None for a malformed line.
    """
    parts = line.split(None, 11)
    if len(parts) < 12:
        return None
    try:
        pid, ppid, pgid, uid = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[4])
        epoch = parse_lstart(" ".join(parts[6:11]))
    except ValueError:
        return None
    return Proc(
        pid=pid,
        ppid=ppid,
        pgid=pgid,
        sid=_int(parts[3], pgid),
        uid=uid,
        state=parts[5][:1],
        starttime=str(int(epoch)),
        start_epoch=epoch,
        argv=tuple(parts[11].split()),
    )


def parse_meminfo(text: str) -> Optional[int]:
    """MemAvailable in bytes from the text of /proc/meminfo."""
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def parse_vm_stat(text: str) -> Optional[int]:
    """(free + inactive pages) * page size from macOS ``vm_stat`` output."""
    size = re.search(r"page size of (\d+) bytes", text)
    free = re.search(r"^Pages free:\s+(\d+)", text, re.MULTILINE)
    inactive = re.search(r"^Pages inactive:\s+(\d+)", text, re.MULTILINE)
    if not (size and free and inactive):
        return None
    return (int(free.group(1)) + int(inactive.group(1))) * int(size.group(1))


def bracket_pattern(pattern: str) -> str:
    """The shell bracket trick: "phone_api.py --port" -> "[p]hone_api.py --port".

    The regex still matches the target, but no longer matches the shell command line that
    carries the pattern. Patterns starting with "[" (or without an alphanumeric) are unchanged;
    an escaped character ("\\d") is never wrapped.
    """
    if pattern.startswith("["):
        return pattern
    escaped = False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isalnum():
            return pattern[:i] + "[" + ch + "]" + pattern[i + 1 :]
    return pattern


# ---------------------------------------------------------------- system readers


def _use_proc(flag: Optional[bool] = None) -> bool:
    if flag is not None:
        return flag
    if USE_PROC is not None:
        return USE_PROC
    return os.path.exists("/proc/self/stat")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str) -> str:
    return _read_bytes(path).decode("utf-8", "replace")


def _run(argv: List[str], timeout: float = CMD_TIMEOUT) -> Optional[Tuple[int, str, str, int]]:
    """Run argv with LC_ALL=C and a timeout -> (returncode, stdout, stderr, pid).

    None when the command is missing or times out (it is killed and reaped then).
    """
    import subprocess  # only without /proc, or for sysctl/lsof (not at the agent's start-up)

    env = dict(os.environ, LC_ALL="C")
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            universal_newlines=True,
            errors="replace",
        )
    except OSError:
        return None
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None
    return child.returncode, out, err, child.pid


def _clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


def _btime() -> float:
    return parse_btime(_read_text("/proc/stat"))


def _uid_of(pid: int) -> int:
    try:
        uid = parse_status_uid(_read_text("/proc/%d/status" % pid))
    except (OSError, ValueError):
        uid = None
    return os.stat("/proc/%d" % pid).st_uid if uid is None else uid


def _proc_read(pid: int, btime: float, clk_tck: int) -> Optional[Proc]:
    """Read /proc/<pid>/stat; None when it vanished or cannot be read. Its argv and uid are read
    when first used (Proc)."""
    try:
        stat = _read_text("/proc/%d/stat" % pid)
        # The owner of the /proc/PID directory is the process's effective uid, dumpable or not
        # (the kernel exempts these 0555 directories from the "non-dumpable: owned by root" rule,
        # kept so that stat() tells the euid: fs/proc/base.c); one stat() instead of reading
        # /proc/PID/status. Files inside (status, environ) do turn root-owned: never used here.
        owner = os.stat("/proc/%d" % pid).st_uid
        return parse_stat(stat, argv=None, uid=owner, btime=btime, clk_tck=clk_tck)
    except (OSError, ValueError):  # FileNotFoundError / ProcessLookupError: gone mid-read
        return None


def _ps(select: List[str]) -> Tuple[Dict[int, Proc], int]:
    """Run ps with our columns -> ({pid: Proc}, pid of the ps process itself).

    Raises RuntimeError when ps cannot run: an empty table must never pass for "nothing runs".
    """
    global _ps_sid_col
    while True:
        cols = _PS_COLS.format(sid=_ps_sid_col)
        res = _run(["ps", "-ww"] + select + ["-o", cols])
        if res is None:
            raise RuntimeError("ps failed to run (missing or timed out after %ss)" % CMD_TIMEOUT)
        rc, out, err, ps_pid = res
        if rc != 0 and err.strip() and not out.strip():
            if _ps_sid_col != "pgid":  # this ps has no "sess" column: use pgid in its place
                _ps_sid_col = "pgid"
                continue
            raise RuntimeError("ps failed: %s" % err.strip()[:200])
        break
    table = {}
    for line in out.splitlines():
        proc = parse_ps_line(line)
        if proc is not None:
            table[proc.pid] = proc
    return table, ps_pid


def snapshot(use_proc: Optional[bool] = None) -> Dict[int, Proc]:
    """{pid: Proc} for every visible process (the /proc scan, or ``ps`` without /proc)."""
    if not _use_proc(use_proc):
        table, ps_pid = _ps(["-ax"])
        table.pop(ps_pid, None)  # the ps we just ran is gone already
        return table
    btime, clk_tck = _btime(), _clk_tck()
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = _proc_read(int(name), btime, clk_tck)
            if proc is not None:
                table[proc.pid] = proc
    return table


def get(pid: int, use_proc: Optional[bool] = None) -> Optional[Proc]:
    """One process, cheaply; None when it is gone."""
    if pid <= 0:
        return None
    if _use_proc(use_proc):
        return _proc_read(pid, _btime(), _clk_tck())
    table, _ = _ps(["-p", str(pid)])
    return table.get(pid)


def boot_id() -> str:
    """Linux boot id; the ``kern.boottime`` sysctl on macOS; "" when unknown."""
    try:
        return _read_text("/proc/sys/kernel/random/boot_id").strip()
    except OSError:
        pass
    res = _run(["sysctl", "-n", "kern.boottime"])
    if res is not None and res[0] == 0:
        return res[1].strip()
    return ""


def identity(pid: int) -> Optional[dict]:
    """{"pid", "starttime", "boot_id"} for a live process; None when gone or a zombie."""
    proc = get(pid)
    if proc is None or not proc.alive:
        return None
    return {"pid": pid, "starttime": proc.starttime, "boot_id": boot_id()}


def same_process(ident: dict) -> bool:
    """True only if a live process has that pid, the same start time and the current boot id."""
    try:
        pid = int(ident["pid"])
        starttime = str(ident["starttime"])
        boot = str(ident["boot_id"])
    except (KeyError, TypeError, ValueError):
        return False
    proc = get(pid)
    if proc is None or not proc.alive or proc.starttime != starttime:
        return False
    return boot == boot_id()


# ---------------------------------------------------------------- the process tree


def children_map(table: Dict[int, Proc]) -> Dict[int, List[int]]:
    """{ppid: [pid, ...]} with the child pids sorted."""
    kids = {}  # type: Dict[int, List[int]]
    for pid in sorted(table):
        kids.setdefault(table[pid].ppid, []).append(pid)
    return kids


def descendants(table: Dict[int, Proc], pid: int) -> List[Proc]:
    """All descendants of pid (any depth), not pid itself, sorted by pid."""
    kids = children_map(table)
    found = set()  # type: Set[int]
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), ()):
            if child != pid and child not in found:
                found.add(child)
                todo.append(child)
    return [table[p] for p in sorted(found)]


def ancestors(table: Dict[int, Proc], pid: int) -> List[int]:
    """Pids from the parent of pid upwards, until pid 1 or a pid not in the table."""
    out = []  # type: List[int]
    seen = {pid}
    proc = table.get(pid)
    while proc is not None and proc.ppid > 0 and proc.ppid not in seen and proc.ppid in table:
        out.append(proc.ppid)
        seen.add(proc.ppid)
        proc = table[proc.ppid]
    return out


def self_and_ancestors(table: Optional[Dict[int, Proc]] = None) -> Set[int]:
    """Pids of this process and all its ancestors (the agent, its shell, the ssh session).

    Uses ``table`` when given and it contains this process; otherwise looks them up live.
    """
    me = os.getpid()
    if table is None or me not in table:
        if not _use_proc():
            table = snapshot()
        else:
            result = set()  # type: Set[int]
            pid = me
            while pid > 0 and pid not in result:
                proc = get(pid)
                if proc is None:
                    break
                result.add(pid)
                pid = proc.ppid
            return result | {me}
    return {me} | set(ancestors(table, me))


def _is_kernel_thread(proc: Proc) -> bool:
    return len(proc.argv) == 1 and proc.argv[0].startswith("[") and proc.argv[0].endswith("]")


def pgrep(table: Dict[int, Proc], pattern: str, exclude: Optional[Set[int]] = None) -> List[Proc]:
    """Procs whose cmdline matches ``re.search(pattern)``, like ``pgrep -f``, sorted by pid.

    Skips zombies, kernel threads and ``exclude`` (default: this process and its ancestors).
    """
    regex = re.compile(pattern)
    if exclude is None:
        exclude = self_and_ancestors(table)
    return [
        proc
        for pid, proc in sorted(table.items())
        if pid not in exclude
        and proc.alive
        and not _is_kernel_thread(proc)
        and regex.search(proc.cmdline)
        and proc.confirm()  # the command line read was this process's (see Proc)
    ]


def _label(proc: Proc) -> str:
    first = proc.argv[0] if proc.argv else "?"
    name = first
    if " " not in first and not first.startswith("["):  # keep "sshd: user@pts/0" whole
        name = os.path.basename(first.rstrip("/")) or first
    rest = re.sub(r"\s+", " ", " ".join(proc.argv[1:])).strip()
    if len(rest) > 80:
        rest = rest[:77] + "..."
    return "%s(%d)%s" % (name, proc.pid, " " + rest if rest else "")


def tree_lines(table: Dict[int, Proc], pid: int) -> List[str]:
    """A ``pstree -p``-like rendering of pid and its descendants; [] when pid is unknown."""
    if pid not in table:
        return []
    kids = children_map(table)
    lines = [_label(table[pid])]
    seen = {pid}

    def walk(parent: int, prefix: str) -> None:
        children = [c for c in kids.get(parent, ()) if c not in seen]
        seen.update(children)
        for i, child in enumerate(children):
            last = i == len(children) - 1
            lines.append(prefix + ("└─ " if last else "├─ ") + _label(table[child]))
            walk(child, prefix + ("   " if last else "│  "))

    walk(pid, "  ")
    return lines


# ---------------------------------------------------------------- ports and memory


def _read_net_tcp() -> Optional[List[str]]:
    texts = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            texts.append(_read_text(path))
        except OSError:  # no IPv6 on this host, say
            pass
    return texts or None


def _pids_holding(inodes: Set[int]) -> Set[int]:
    targets = {"socket:[%d]" % i for i in inodes}
    pids = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % name
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir + "/" + fd)
            except OSError:
                continue
            if link in targets:
                pids.add(int(name))
                break
    return pids


def listening_pids(port: int, use_proc: Optional[bool] = None) -> Set[int]:
    """Pids holding a LISTENING TCP socket on ``port`` (IPv4 and IPv6, any address).

    Without root, other users' processes are not visible on Linux (their fds are unreadable).
    """
    texts = _read_net_tcp() if _use_proc(use_proc) else None
    if texts is not None:
        inodes = set()  # type: Set[int]
        for text in texts:
            inodes |= listen_inodes(text, port)
        return _pids_holding(inodes) if inodes else set()
    res = _run(["lsof", "-nP", "-iTCP:%d" % port, "-sTCP:LISTEN", "-t"])
    if res is None:
        return set()
    return {int(line) for line in res[1].split() if line.isdigit()}


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if a TCP connect to host:port succeeds within timeout."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_listening(port: int, use_proc: Optional[bool] = None) -> bool:
    """True if any LISTEN socket exists on the port (any user, any address).

    Without /proc: a connect to 127.0.0.1 and ::1 (misses a listener bound to another address).
    """
    texts = _read_net_tcp() if _use_proc(use_proc) else None
    if texts is not None:
        return any(_has_listener(text, port) for text in texts)
    return port_accepts(port, "127.0.0.1") or port_accepts(port, "::1")


def mem_available_bytes() -> Optional[int]:
    """Available memory in bytes (/proc/meminfo MemAvailable, or macOS vm_stat); None if unknown."""
    try:
        return parse_meminfo(_read_text("/proc/meminfo"))
    except OSError:
        pass
    res = _run(["vm_stat"])
    if res is None or res[0] != 0:
        return None
    return parse_vm_stat(res[1])
