"""A /proc snapshot reads one stat line per process; argv and uid are read when a check first
needs them, and a lazy read is the same process's (pid + start time) or reads as gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops.agent import procs

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")


def _stat(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read()


def test_a_snapshot_reads_only_stat_lines_until_argv_or_uid_is_asked(monkeypatch):
    opened: list[str] = []
    real = procs._read_bytes
    monkeypatch.setattr(procs, "_read_bytes", lambda path: opened.append(path) or real(path))
    table = procs.snapshot()
    assert table and all(p.endswith("/stat") for p in opened)
    me = table[os.getpid()]
    opened.clear()
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        expected = procs.split_cmdline(f.read())
    opened.clear()
    assert me.argv == expected
    assert me.cmdline == " ".join(me.argv)
    assert any(p.endswith("/cmdline") for p in opened)
    assert me.uid == os.geteuid()
    assert not any(p.endswith("/status") for p in opened)  # the uid came with the snapshot


def _started(*extra: str, **kwargs) -> subprocess.Popen:
    """A child python, once it runs its own code (its command line is in place: exec is done)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()",
                              *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    return child


def test_a_lazily_read_process_is_the_same_as_an_eagerly_read_one():
    child = _started("lazy-marker")
    try:
        lazy = procs.parse_stat(_stat(child.pid), argv=None, uid=None)
        with open(f"/proc/{child.pid}/cmdline", "rb") as f:
            argv = procs.split_cmdline(f.read())
        eager = procs.parse_stat(_stat(child.pid), argv=argv, uid=os.geteuid())
        assert lazy == eager and hash(lazy) == hash(eager)
        assert lazy.argv[-1] == "lazy-marker" and lazy.alive
    finally:
        child.communicate(b"", timeout=30)


def test_a_process_that_ended_before_its_argv_was_read_reads_as_gone():
    child = _started("lazy-marker")
    proc = procs.parse_stat(_stat(child.pid), argv=None, uid=None)
    child.communicate(b"", timeout=30)  # ended and reaped: its /proc entry is gone
    assert proc.argv[0].startswith("[") and proc.argv[0].endswith("]")
    assert not proc.alive
    assert procs.pgrep({proc.pid: proc}, "lazy-marker", exclude=set()) == []


def _reused(pid: int) -> procs.Proc:
    """The stat line of ``pid`` with another start time: what a reused pid looks like."""
    head, _, tail = _stat(pid).rpartition(")")
    fields = tail.split()
    fields[19] = str(int(fields[19]) + 1)
    return procs.parse_stat(head + ") " + " ".join(fields), argv=None, uid=None)


def test_a_reused_pid_never_lends_its_command_line_to_a_match():
    child = _started("lazy-marker")
    try:
        same = procs.parse_stat(_stat(child.pid), argv=None, uid=None)
        assert procs.pgrep({child.pid: same}, "lazy-marker", exclude=set()) == [same]  # healthy twin
        other = _reused(child.pid)
        assert procs.pgrep({child.pid: other}, "lazy-marker", exclude=set()) == []
        assert not other.alive and not other.confirm()
    finally:
        child.communicate(b"", timeout=30)


def test_a_marker_read_from_a_reused_pid_is_not_taken():
    from ops.agent import ownership

    child = _started(env=dict(os.environ, OPS_OWNER="/state#svc#1"))
    try:
        same = procs.parse_stat(_stat(child.pid), argv=None, uid=None)
        assert ownership.Probe().marker(same) == ("/state", "svc", "1")  # healthy twin
        assert ownership.Probe().marker(_reused(child.pid)) is None
    finally:
        child.communicate(b"", timeout=30)


def test_a_proc_is_immutable():
    p = procs.Proc(1, 0, 1, 1, 0, "S", "1", 0.0, ("init",))
    with pytest.raises(AttributeError):
        p.pid = 2  # type: ignore[misc]


UNDUMP = "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); "  # PR_SET_DUMPABLE 0
NON_DUMPABLE = "import ctypes, sys; " + UNDUMP + "print('ready', flush=True); sys.stdin.read()"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to start a process as another user) and /usr/bin/python3")
@pytest.mark.parametrize("dumpable", [True, False])
def test_a_process_uid_comes_from_its_proc_dir_owner_without_reading_status(monkeypatch, dumpable):
    """Another user's process, dumpable or not (a non-dumpable one's status file is root's): the
    uid from the snapshot is its effective uid, as /proc/PID/status says, with one stat line read."""
    code = NON_DUMPABLE if not dumpable else NON_DUMPABLE.replace(UNDUMP, "")
    child = subprocess.Popen(["/usr/bin/python3", "-c", code], user=65534, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd="/")
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        if not dumpable:
            assert os.stat(f"/proc/{child.pid}/status").st_uid == 0  # what makes this case hard
        opened: list[str] = []
        real = procs._read_bytes
        monkeypatch.setattr(procs, "_read_bytes", lambda path: opened.append(path) or real(path))
        proc = procs._proc_read(child.pid, 0.0, 100)
        assert proc is not None and proc.uid == 65534
        assert opened == [f"/proc/{child.pid}/stat"]
        with open(f"/proc/{child.pid}/status") as f:
            assert procs.parse_status_uid(f.read()) == 65534
    finally:
        child.kill()
        child.wait(30)
