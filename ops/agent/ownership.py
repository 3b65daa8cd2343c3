"""Which processes belong to a service: the one place on the host that decides it.

Stdlib only, python3.8+. Everything that signals, counts or sweeps a process asks this module
first. A process belongs to a service (more exactly: to the *domain* of a top-level service, that
is the service and the children it supervises) when, in this order of evidence:

1. ``recorded``: it is the process the tool spawned (pid + start time + boot id, from the state
   file);
2. ``group``: it is a live member of the process group the tool created for it at the spawn
   (``setsid``), born at or after the spawn. The group id is trusted only while its leader is the
   recorded process or is gone: a live process holding that pid with another start time means the
   id has been reused, and then the group is no longer ours. The same holds for the group of the
   child run by the tool's own supervisor;
3. ``tree``: it descends from a process of 1 or 2;
4. ``marker``: it carries ``OPS_OWNER=<state dir>#<service>#<start id>`` in its environment
   (read from ``/proc/PID/environ``, only for processes of the agent's own user). The tool puts the
   marker in the environment of everything it spawns, and descendants inherit it, so a child that
   was re-parented to init and left the group is still found;
5. ``pattern``: for a process that escaped all of the above (a program that builds its child's
   environment from an allowlist, then was re-parented), it matches the service's pattern AND
   runs as the same user AND runs from this host's checkout (its cwd, or a path in its argv, under
   the host's ``path``), AND carries no marker of something else.

A process that matches a service's pattern but fails these tests is *foreign*: it is never
signalled and never counted, only reported with the reason ("runs from /srv/prod, not from this
host's checkout /srv/staging: not touched").
"""

import os

from . import procs

MARKER = "OPS_OWNER"


# ---------------------------------------------------------------- pure parts


def marker_value(state_root, service, start_id=""):
    """The value of the ownership marker the tool puts in the environment of what it spawns."""
    return "%s#%s#%s" % (state_root, service, start_id)


def parse_marker(value):
    """(state_root, service, start_id) from a marker value; None when it is not one."""
    if not value:
        return None
    head, sep, start_id = value.rpartition("#")
    if not sep:
        return None
    root, sep, service = head.rpartition("#")
    if not sep or not root or not service:
        return None
    return root, service, start_id


def marker_in_environ(raw):
    """The marker's value from the raw bytes of /proc/PID/environ (NUL-separated), or None."""
    prefix = (MARKER + "=").encode()
    if prefix not in raw:  # most environments: no entry can start with it (one C-speed search)
        return None
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode("utf-8", "replace")
    return None


def resolve_argv(argv, cwd, exists=os.path.exists):
    """The command as the tool runs it: relative paths in argv made absolute under cwd.

    A token is resolved when it names a path (it holds a "/", does not start with "/", "-" or
    "~", carries no "=" or "://") and that path exists under cwd (``exists`` is injectable for the
    pure client-side approximation). A bare program name (``python3``) is left for PATH lookup.
    The result is what the process's command line shows, so the default pattern built from it
    tells two checkouts of the same app apart.
    """
    out = []
    for token in argv:
        if (
            "/" in token
            and not token.startswith(("/", "-", "~"))
            and "=" not in token
            and "://" not in token
        ):
            candidate = os.path.normpath(os.path.join(cwd, token))
            if exists(candidate):
                token = candidate
        out.append(token)
    return out


_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def literal(text):
    """text as a regex that matches exactly it: only the characters that mean something in a
    regex are escaped (re.escape also escapes spaces and dashes, which reads badly in reports)."""
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def _word(word):
    """One command word as a pattern: a program named without a path (``python3``) may show as a
    full path, since a shim such as pyenv's or asdf's execs the real program by its path, so any
    directory is accepted in front of it (and nothing else)."""
    return literal(word) if "/" in word else r"(?:\S*/)?" + literal(word)


def default_match(argv, script=None):
    """The default pattern of a service: its resolved command line as the process shows it,
    anchored at both ends. ``script``: when PATH finds the program as a script, what its process
    shows in its place (its ``#!`` interpreter, then the script's full path; path_script), the
    other form the first word may take."""
    if not argv:
        return "^$"
    first = _word(argv[0])
    if script:
        first = "(?:%s|%s)" % (first, " ".join([_word(script[0])] + [literal(a) for a in script[1:]]))
    return "^" + " ".join([first] + [literal(a) for a in argv[1:]]) + "$"


def which(name, path):
    """The executable file PATH (a string) finds for a program name, or None (shutil.which's rule,
    without importing shutil into the agent)."""
    for d in (path or "").split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def shebang(path):
    """The interpreter command a script's ``#!`` line runs it with, as the process will show it:
    ``["/bin/sh"]``, ``["/usr/bin/python3", "-u"]``, or ``["python3"]`` for ``/usr/bin/env
    python3`` (env runs it by name). None for anything that is not a readable script (a device
    or a FIFO is never opened: neither is a script, and reading one may never end)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    interp, _, arg = line.partition(" ")  # the kernel passes the rest of the line as ONE argument
    arg = arg.strip()
    if not interp:
        return None
    if os.path.basename(interp) == "env" and arg and not arg.startswith("-") and " " not in arg:
        return [arg]
    return [interp] + ([arg] if arg else [])


def path_script(argv, path, read_shebang=shebang):
    """For a program named without a path that PATH finds as a script (a venv's console script,
    a tool's launcher): what its process shows in front of the arguments, ``[interpreter...,
    full path]``; None when it is not one."""
    if not argv or "/" in argv[0]:
        return None
    found = which(argv[0], path)
    if found is None:
        return None
    interp = read_shebang(found)
    return interp + [found] if interp else None


def shown_argv(argv, read_shebang=shebang):
    """The command line a process started with argv shows: for a script given by its path
    (``./run.sh``, resolved), the kernel runs its ``#!`` interpreter with the script's path as
    the next argument. A program found by PATH is left as named (a shim there is itself a script
    that execs something else)."""
    if argv and argv[0].startswith("/"):
        interp = read_shebang(argv[0])
        if interp:
            return interp + list(argv)
    return list(argv)


def under(path, roots):
    """True when path is one of roots or inside one of them (paths normalised, no I/O)."""
    if not path:
        return False
    path = os.path.normpath(path)
    for root in roots:
        root = os.path.normpath(root)
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


# ---------------------------------------------------------------- evidence readers


class Probe:
    """Per-process evidence beyond the stat line (environment marker, cwd), read lazily and
    cached for one snapshot. Only processes of the agent's own user are ever read."""

    def __init__(self, uid=None):
        self.uid = os.geteuid() if uid is None else uid
        self._markers = {}
        self._cwds = {}

    def same_user(self, proc):
        return proc.uid == self.uid

    def marker(self, proc):
        """(state_root, service, start_id) of the marker the process carries, or None."""
        key = (proc.pid, proc.starttime)
        if key not in self._markers:
            value = None
            if self.same_user(proc):
                try:
                    with open("/proc/%d/environ" % proc.pid, "rb") as f:
                        value = marker_in_environ(f.read())
                except OSError:
                    value = None
                if value is not None and not proc.confirm():
                    value = None  # the pid is another process's now (procs.Proc.confirm)
            self._markers[key] = parse_marker(value)
        return self._markers[key]

    def cwd(self, proc):
        key = (proc.pid, proc.starttime)
        if key not in self._cwds:
            try:
                self._cwds[key] = os.readlink("/proc/%d/cwd" % proc.pid)
            except OSError:
                self._cwds[key] = None
        return self._cwds[key]

    def in_checkout(self, proc, roots):
        """Runs from the checkout: its cwd, or an absolute (or cwd-relative) argv path, under it."""
        cwd = self.cwd(proc)
        if under(cwd, roots):
            return True
        for token in proc.argv:  # noqa: SIM102 (two kinds of path, one rule each)
            if token.startswith("/"):
                if under(token, roots):
                    return True
            elif cwd and "/" in token and not token.startswith("-"):
                relative = os.path.join(cwd, token)
                if under(relative, roots):
                    return True
        return False


def checkout_roots(checkout):
    """The checkout as written and as resolved (a symlinked home must not hide it)."""
    roots = [os.path.normpath(checkout)]
    real = os.path.realpath(checkout)
    if real not in roots:
        roots.append(real)
    return roots


# ---------------------------------------------------------------- the domain of a service


class Domain:
    """What one top-level service (with the children it supervises) owns right now.

    ``members`` maps pid -> reason for everything found by identity (recorded, group, tree,
    marker); pattern matches are judged one by one with ``judge`` / ``classify``.
    """

    def __init__(
        self,
        table,
        state_root,
        checkout,
        name,
        state=None,
        supervisor_state=None,
        protected=(),
        probe=None,
        scan_markers=True,
        start_id=None,
    ):
        self.table = table
        self.state_root = state_root
        self.name = name
        self.roots = checkout_roots(checkout)
        self.probe = probe or Probe()
        self.protected = set(protected)
        self.start_id = start_id
        self.members = {}
        self.root = None  # the recorded process, while it is still the same process
        self.groups = []  # process group ids that are provably ours
        state = state or {}
        boot = procs.boot_id()
        same_boot = not state.get("boot_id") or state.get("boot_id") == boot
        pid, starttime = state.get("pid"), state.get("starttime")
        if pid and starttime is not None and same_boot:
            p = table.get(pid)
            if p is not None and p.alive and p.starttime == str(starttime):
                self.root = pid
                self._add(pid, "recorded")
        if same_boot:
            self._group(state.get("pgid") or pid, pid, starttime)
            sup = supervisor_state or {}
            if sup.get("child_pid") and sup.get("child_starttime") is not None:
                child = table.get(sup["child_pid"])
                if child is not None and child.alive and child.starttime == str(sup["child_starttime"]):
                    self._add(child.pid, "recorded")
                self._group(sup["child_pid"], sup["child_pid"], sup["child_starttime"])
        for p in list(self.members):
            for d in procs.descendants(table, p):
                if d.alive:
                    self._add(d.pid, "tree")
        if scan_markers:
            for p in table.values():
                if p.pid not in self.members and p.alive and self._marked_ours(p):
                    self._add(p.pid, "marker")
                    for d in procs.descendants(table, p.pid):
                        if d.alive:
                            self._add(d.pid, "tree")

    def _add(self, pid, reason):
        if pid in self.protected:
            return
        self.members.setdefault(pid, reason)

    def _group(self, pgid, leader_pid, leader_starttime):
        """Members of a process group the tool created (leader = the process spawned with setsid)."""
        if not pgid or leader_starttime is None:
            return
        leader = self.table.get(pgid)
        if leader is not None and leader.alive and leader.starttime != str(leader_starttime):
            return  # the id now belongs to another process: the group is not ours any more
        try:
            born = int(leader_starttime)
        except (TypeError, ValueError):
            return
        found = False
        for p in self.table.values():
            if p.pgid != pgid or not p.alive or not self.probe.same_user(p):
                continue
            try:
                if int(p.starttime) < born:
                    continue
            except ValueError:
                continue
            found = True
            self._add(p.pid, "recorded" if p.pid == pgid else "group")
        if found:
            self.groups.append(pgid)

    def _marked_ours(self, proc):
        mark = self.probe.marker(proc)
        if mark is None or mark[0] != self.state_root or mark[1] != self.name:
            return False
        return self.start_id is None or mark[2] == self.start_id

    # --- judging one process -------------------------------------------------------------

    def judge(self, proc):
        """(reason or None, why not). reason: how the process is provably ours; else why not."""
        if proc.pid in self.protected:
            return None, "it is the agent or its session"
        if proc.pid in self.members:
            return self.members[proc.pid], ""
        if not self.probe.same_user(proc):
            return None, "runs as uid %d, not as this user (uid %d)" % (proc.uid, self.probe.uid)
        mark = self.probe.marker(proc)
        if mark is not None:
            if mark[0] != self.state_root:
                return None, "carries the marker of another state directory (%s)" % mark[0]
            if mark[1] != self.name:
                return None, "carries the marker of service %s" % mark[1]
            if self.start_id is not None and mark[2] != self.start_id:
                return None, "was started by another start of %s" % self.name
            return "marker", ""
        if self.start_id is not None:
            return None, "not started by this start"
        if self.probe.in_checkout(proc, self.roots):
            return "pattern", ""
        cwd = self.probe.cwd(proc)
        return None, "runs from %s, not from this host's checkout %s" % (cwd or "an unknown directory",
                                                                        self.roots[0])

    def classify(self, pattern):
        """Processes matching pattern -> (owned [(Proc, reason)], foreign [(Proc, why)])."""
        owned, foreign = [], []
        for p in procs.pgrep(self.table, pattern, exclude=self.protected):
            reason, why = self.judge(p)
            if reason:
                owned.append((p, reason))
            else:
                foreign.append((p, why))
        return owned, foreign

    def tree_of_root(self):
        """The recorded process and its descendants (empty when it is gone)."""
        if self.root is None:
            return set()
        out = {self.root}
        for d in procs.descendants(self.table, self.root):
            if d.alive:
                out.add(d.pid)
        return out


def instances(table, found):
    """Separate instances among processes: those that do not descend from another one of them
    (a server that forks workers is one instance, whatever the workers' command lines)."""
    pids = set(p.pid for p in found)
    return [p for p in found if not any(a in pids for a in procs.ancestors(table, p.pid))]


def foreign_note(table, foreign, pattern_owner):
    """One line for the processes that match a pattern but are not ours: never touched."""
    if not foreign:
        return ""
    parts = []
    for p, why in foreign[:3]:
        parts.append("pid %d (%s) %s" % (p.pid, p.cmdline[:80], why))
    more = " and %d more" % (len(foreign) - 3) if len(foreign) > 3 else ""
    return "match%s %s's pattern but %s not its own: %s%s: not touched" % (
        "es" if len(foreign) == 1 else "",
        pattern_owner,
        "is" if len(foreign) == 1 else "are",
        "; ".join(parts),
        more,
    )
