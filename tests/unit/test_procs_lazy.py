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
    assert not any(p.endswith("/status") for p in opened)
    assert me.uid == os.geteuid()
    assert any(p.endswith("/status") for p in opened)


def test_a_lazily_read_process_is_the_same_as_an_eagerly_read_one():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "lazy-marker"],
                             stdin=subprocess.PIPE)
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
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "lazy-marker"],
                             stdin=subprocess.PIPE)
    proc = procs.parse_stat(_stat(child.pid), argv=None, uid=None)
    child.communicate(b"", timeout=30)  # ended and reaped: its /proc entry is gone
    assert proc.argv[0].startswith("[") and proc.argv[0].endswith("]")
    assert not proc.alive
    assert procs.pgrep({proc.pid: proc}, "lazy-marker", exclude=set()) == []


def test_a_reused_pid_never_lends_its_command_line_or_uid():
    """Same pid, another start time (what a reused pid looks like): the lazy read is refused."""
    text = _stat(os.getpid())
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    fields[19] = str(int(fields[19]) + 1)
    other = procs.parse_stat(head + ") " + " ".join(fields), argv=None, uid=None)
    assert other.argv[0].startswith("[") and not other.alive
    other2 = procs.parse_stat(head + ") " + " ".join(fields), argv=None, uid=None)
    assert other2.uid == -1 and not other2.alive


def test_a_proc_is_immutable():
    p = procs.Proc(1, 0, 1, 1, 0, "S", "1", 0.0, ("init",))
    with pytest.raises(AttributeError):
        p.pid = 2  # type: ignore[misc]
