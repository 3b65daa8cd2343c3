"""ops.agent.procs: parsers on literal text, then real processes on this Linux box."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ops.agent import procs
from ops.agent.procs import Proc

PROCS_PY = Path(procs.__file__).resolve()
HAVE_PROC = os.path.exists("/proc/self/stat")
linux_only = pytest.mark.skipif(not HAVE_PROC, reason="needs /proc")
needs_ps = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v ps"], stdout=subprocess.DEVNULL).returncode != 0,
    reason="needs ps",
)


def mk(pid, ppid, argv=("prog",), state="S", pgid=None, sid=1):
    return Proc(
        pid=pid,
        ppid=ppid,
        pgid=pid if pgid is None else pgid,
        sid=sid,
        uid=1000,
        state=state,
        starttime=str(pid * 10),
        start_epoch=1.0e9 + pid,
        argv=tuple(argv),
    )


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll until predicate() is truthy; return its value or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_line(child, timeout=10.0):
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"child printed nothing within {timeout}s")
    return child.stdout.readline().strip()


@pytest.fixture
def spawn():
    """Start children in their own session; kill the whole group and reap them afterwards."""
    started = []

    def start(argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        child = subprocess.Popen(argv, **kw)
        started.append(child)
        return child

    yield start
    for child in started:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()


def sleeper(spawn, marker):
    return spawn([sys.executable, "-c", f"import time; time.sleep(30)  # {marker}"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LISTENER = """
import socket, sys, time
host = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen(5)
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


# ---------------------------------------------------------------- Proc


def test_proc_cmdline_joins_argv_and_zombie_is_not_alive():
    p = mk(10, 1, argv=("python3", "api.py", "--port", "8770"))
    assert p.cmdline == "python3 api.py --port 8770"
    assert p.alive
    assert not mk(11, 1, state="Z").alive


def test_proc_is_frozen():
    with pytest.raises(AttributeError):
        mk(10, 1).pid = 11


# ---------------------------------------------------------------- /proc/<pid>/stat

STAT_TAIL = (
    "S 4078 4078 2762 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 33605 3133440 390 "
    "18446744073709551615 93973872312320 93973872332201 140726214233008 0 0 0 0 0 0 0 0 0 17 "
    "1 0 0 0 0 0 93973872348208 93973872349824 93974250291200 140726214236889 "
    "140726214236909 140726214236909 140726214238187 0"
)


def test_parse_stat_comm_with_spaces_and_close_paren():
    text = "4087 (my ) (weird) prog) " + STAT_TAIL + "\n"
    p = procs.parse_stat(text, uid=1000, btime=1700000000.0, clk_tck=100)
    assert (p.pid, p.ppid, p.pgid, p.sid, p.uid) == (4087, 4078, 4078, 2762, 1000)
    assert p.state == "S"
    assert p.starttime == "33605"
    assert p.start_epoch == pytest.approx(1700000000.0 + 336.05)
    assert p.argv == ("[my ) (weird) prog]",)  # no cmdline: shown like a kernel thread


def test_parse_stat_keeps_given_argv():
    p = procs.parse_stat("7 (python3) " + STAT_TAIL, argv=["python3", "-c", "pass"])
    assert p.argv == ("python3", "-c", "pass")
    assert p.cmdline == "python3 -c pass"


@pytest.mark.parametrize("text", ["", "garbage", "12 (x) S 1 2", "x (y) " + STAT_TAIL])
def test_parse_stat_rejects_garbage(text):
    with pytest.raises(ValueError):
        procs.parse_stat(text)


def test_split_cmdline_on_nul_and_trailing_padding():
    assert procs.split_cmdline(b"python3\0-c\0x y\0") == ("python3", "-c", "x y")
    assert procs.split_cmdline(b"sshd: root@pts/0\0\0\0\0") == ("sshd: root@pts/0",)
    assert procs.split_cmdline(b"") == ()


def test_parse_status_uid_is_the_effective_uid():
    text = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1001\t1002\t1003\n"
    assert procs.parse_status_uid(text) == 1001
    assert procs.parse_status_uid("Name:\tx\n") is None


def test_parse_btime():
    assert procs.parse_btime("cpu  1 2 3\nbtime 1795612300\nprocesses 99\n") == 1795612300.0
    with pytest.raises(ValueError):
        procs.parse_btime("cpu 1 2 3\n")


# ---------------------------------------------------------------- /proc/net/tcp

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D432 06 00000000:00000000 03:00000F9C 00000000     0        0 0 3 0000000000000000
"""  # noqa: E501

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 22222 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 22223 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501


def test_parse_tcp_line_reads_port_state_inode_and_skips_header():
    lines = TCP.splitlines()
    assert procs.parse_tcp_line(lines[0]) is None
    assert procs.parse_tcp_line(lines[1]) == (8080, "0A", 12345)
    assert procs.parse_tcp_line(lines[2]) == (8080, "01", 12346)
    assert procs.parse_tcp_line("") is None
    assert procs.parse_tcp_line("   0: zz:1F90 x 0A a b c d e notanumber") is None


def test_listen_inodes_counts_listen_not_established_or_time_wait_ipv4():
    assert procs.listen_inodes(TCP, 8080) == {12345}
    assert procs.listen_inodes(TCP, 0xD431) == set()  # that port only has a client socket
    assert procs.listen_inodes(TCP, 9999) == set()


def test_listen_inodes_ipv6():
    assert procs.listen_inodes(TCP6, 8081) == {22222}
    assert procs.listen_inodes(TCP6, 0xA1B2) == set()


# ---------------------------------------------------------------- ps fallback parsing


def test_parse_lstart_both_day_month_orders():
    expected = time.mktime((2026, 1, 26, 10, 0, 0, 0, 0, -1))
    assert procs.parse_lstart("Mon Jan 26 10:00:00 2026") == expected
    assert procs.parse_lstart("Mon 26 Jan 10:00:00 2026") == expected
    assert procs.parse_lstart("  mon  jan 26 10:00:00  2026 \n") == expected


def test_parse_lstart_space_padded_day():
    expected = time.mktime((2026, 1, 5, 9, 3, 4, 0, 0, -1))
    assert procs.parse_lstart("Mon Jan  5 09:03:04 2026") == expected
    assert procs.parse_lstart("Mon  5 Jan 09:03:04 2026") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "Mon Jan 26 10:00:00",
        "Mon Jan 26 10:00:00 2026 extra",
        "Mon Foo 26 10:00:00 2026",
        "Mon Jan Feb 10:00:00 2026",
        "Xyz Jan 26 10:00:00 2026",
        "Mon Jan 32 10:00:00 2026",
        "Mon Feb 30 10:00:00 2026",
        "Mon Jan 26 25:00:00 2026",
        "Mon Jan 26 10:00 2026",
        "Mon Jan 26 10:0a:00 2026",
        "Mon Jan 26 10:00:00 26",
        "lun. 26 janv. 10:00:00 2026",
    ],
)
def test_parse_lstart_garbage_raises_value_error(text):
    with pytest.raises(ValueError):
        procs.parse_lstart(text)


@pytest.mark.parametrize(
    "lstart", ["Mon Jan 26 10:00:00 2026", "Mon 26 Jan 10:00:00 2026", "Mon Jan 26  10:00:00 2026"]
)
def test_parse_ps_line_in_both_lstart_orders(lstart):
    line = f"  4242     1  4242  4240   501 Ss   {lstart} /usr/bin/python3 api.py  --port 8770"
    p = procs.parse_ps_line(line)
    epoch = time.mktime((2026, 1, 26, 10, 0, 0, 0, 0, -1))
    assert p == Proc(
        pid=4242,
        ppid=1,
        pgid=4242,
        sid=4240,
        uid=501,
        state="S",
        starttime=str(int(epoch)),
        start_epoch=epoch,
        argv=("/usr/bin/python3", "api.py", "--port", "8770"),
    )


def test_parse_ps_line_kernel_thread_and_hex_or_odd_session():
    p = procs.parse_ps_line(
        "    2     0     0     0     0 S    Wed Nov 25 13:12:33 2026 [kthreadd]"
    )
    assert p.argv == ("[kthreadd]",) and p.state == "S"
    mac = procs.parse_ps_line("  77  1  77  1a2b  0 Ss  Mon Jan 26 10:00:00 2026 /sbin/launchd")
    assert mac.sid == 0x1A2B
    odd = procs.parse_ps_line("  77  1  70  -  0 Ss  Mon Jan 26 10:00:00 2026 /sbin/launchd")
    assert odd.sid == 70  # unusable session column: the pgid stands in


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "PID PPID PGID SESS UID STAT STARTED COMMAND",
        "  4242  1  4242  4242  501 S  Mon Jan 26 10:00:00 2026",  # no args
        "  4242  1  4242  4242  501 S  Mon Foo 26 10:00:00 2026 python3",
        "  x  1  4242  4242  501 S  Mon Jan 26 10:00:00 2026 python3",
    ],
)
def test_parse_ps_line_malformed_is_none(line):
    assert procs.parse_ps_line(line) is None


# ---------------------------------------------------------------- memory parsers


def test_parse_meminfo_mem_available_in_bytes():
    text = "MemTotal:       16318480 kB\nMemFree:         1234 kB\nMemAvailable:   8000000 kB\n"
    assert procs.parse_meminfo(text) == 8000000 * 1024
    assert procs.parse_meminfo("MemTotal: 1 kB\n") is None


def test_parse_vm_stat_free_plus_inactive_pages():
    text = (
        "Mach Virtual Memory Statistics: (page size of 16384 bytes)\n"
        "Pages free:                               12345.\n"
        "Pages active:                            500000.\n"
        "Pages inactive:                          100000.\n"
        "Pages speculative:                         4000.\n"
    )
    assert procs.parse_vm_stat(text) == (12345 + 100000) * 16384
    assert procs.parse_vm_stat("nothing here") is None


# ---------------------------------------------------------------- bracket_pattern


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("phone_api.py --port", "[p]hone_api.py --port"),
        ("/usr/bin/uvicorn app:main", "/[u]sr/bin/uvicorn app:main"),
        ("[p]hone_api.py", "[p]hone_api.py"),
        ("\\d+ worker", "\\d+ [w]orker"),
        ("--- ...", "--- ..."),
        ("", ""),
    ],
)
def test_bracket_pattern(pattern, expected):
    assert procs.bracket_pattern(pattern) == expected


def test_bracket_pattern_still_matches_target_but_not_its_own_text():
    pattern = procs.bracket_pattern("phone_api.py --port")
    assert re.search(pattern, "python3 phone_api.py --port 8770")
    assert not re.search(pattern, f"pgrep -f '{pattern}'")


# ---------------------------------------------------------------- the tree, on a literal table


def literal_table():
    return {
        p.pid: p
        for p in [
            mk(1, 0, argv=("/sbin/init",)),
            mk(2, 0, argv=("[kthreadd]",)),
            mk(10, 1, argv=("/usr/bin/python3", "daemon.py", "auto")),
            mk(12, 10, argv=("/usr/bin/python3", "api.py", "--port", "8770")),
            mk(11, 10, argv=("sh", "-c", "x" * 200)),
            mk(20, 11, argv=("sleep", "30")),
            mk(21, 10, argv=("python3", "dead.py"), state="Z"),
            mk(30, 1, argv=("sshd: root@pts/0",)),
        ]
    }


def test_children_map_descendants_and_ancestors():
    t = literal_table()
    assert procs.children_map(t)[10] == [11, 12, 21]
    assert [p.pid for p in procs.descendants(t, 10)] == [11, 12, 20, 21]
    assert procs.descendants(t, 20) == []
    assert procs.ancestors(t, 20) == [11, 10, 1]
    assert procs.ancestors(t, 1) == []
    assert procs.ancestors(t, 999) == []


def test_tree_lines_renders_branches_and_shortens_args():
    lines = procs.tree_lines(literal_table(), 10)
    assert lines[0] == "python3(10) daemon.py auto"
    assert lines[1] == "  ├─ sh(11) -c " + "x" * 74 + "..."
    assert lines[2] == "  │  └─ sleep(20) 30"
    assert lines[3] == "  ├─ python3(12) api.py --port 8770"
    assert lines[4] == "  └─ python3(21) dead.py"
    assert len(lines) == 5
    assert procs.tree_lines(literal_table(), 30) == ["sshd: root@pts/0(30)"]
    assert procs.tree_lines(literal_table(), 999) == []


def test_pgrep_on_literal_table_skips_zombies_kernel_threads_and_excluded():
    t = literal_table()
    assert [p.pid for p in procs.pgrep(t, r"python3", exclude=set())] == [10, 12]
    assert [p.pid for p in procs.pgrep(t, r"kthreadd", exclude=set())] == []
    assert [p.pid for p in procs.pgrep(t, r".", exclude={1, 10, 11})] == [12, 20, 30]
    assert [p.pid for p in procs.pgrep(t, r"api\.py --port 87\d\d", exclude=set())] == [12]


@pytest.mark.parametrize("ident", [{}, {"pid": 1}, {"pid": "x", "starttime": 1, "boot_id": ""}])
def test_same_process_rejects_malformed_ident(ident):
    assert procs.same_process(ident) is False


# ---------------------------------------------------------------- real processes (Linux)


@linux_only
def test_snapshot_contains_current_process_with_right_ppid():
    table = procs.snapshot()
    me = table[os.getpid()]
    assert me.ppid == os.getppid()
    assert me.pgid == os.getpgid(0) and me.sid == os.getsid(0)
    assert me.uid == os.geteuid()
    assert me.state == "R" and me.alive
    assert abs(me.start_epoch - time.time()) < 24 * 3600 * 365
    assert procs.get(os.getpid()).starttime == me.starttime


@linux_only
def test_get_of_a_missing_pid_is_none():
    assert procs.get(0) is None
    assert procs.get(2**22 + 12345) is None  # above pid_max's ceiling
    assert procs.identity(2**22 + 12345) is None


@linux_only
def test_boot_id_is_the_kernel_boot_id():
    assert procs.boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert procs.boot_id()


@linux_only
def test_pgrep_finds_spawned_child_by_unique_pattern(spawn):
    marker = f"marker-{uuid.uuid4()}"
    child = sleeper(spawn, marker)
    found = wait_for(lambda: procs.pgrep(procs.snapshot(), re.escape(marker)), what="the child")
    assert [p.pid for p in found] == [child.pid]
    assert found[0].argv[-1].endswith(marker)


@linux_only
def test_pgrep_never_returns_self_or_ancestors_even_when_own_cmdline_matches():
    table = procs.snapshot()
    mine = procs.self_and_ancestors()
    assert os.getpid() in mine and os.getppid() in mine
    assert mine == {os.getpid()} | set(procs.ancestors(table, os.getpid()))
    own = re.escape(table[os.getpid()].cmdline)
    assert os.getpid() in [p.pid for p in procs.pgrep(table, own, exclude=set())]
    assert not {p.pid for p in procs.pgrep(table, own)} & mine
    assert not {p.pid for p in procs.pgrep(table, ".")} & mine


@linux_only
def test_pgrep_in_a_child_skips_the_child_and_its_shell_parent():
    """The agent (python) runs under a shell whose command line carries the same pattern."""
    marker = f"marker-{uuid.uuid4()}"
    code = (
        "import importlib.util, json, os, sys\n"
        "spec = importlib.util.spec_from_file_location('procs', sys.argv[1])\n"
        "procs = importlib.util.module_from_spec(spec)\n"
        "sys.modules['procs'] = procs\n"
        "spec.loader.exec_module(procs)\n"
        "t = procs.snapshot()\n"
        "print(json.dumps({'default': [p.pid for p in procs.pgrep(t, MARKER)],\n"
        "    'all': [p.pid for p in procs.pgrep(t, MARKER, exclude=set())],\n"
        "    'me': os.getpid(), 'parent': os.getppid()}))\n"
    ).replace("MARKER", repr(marker))
    script = shlex.join([sys.executable, "-c", code, str(PROCS_PY)]) + "; true"
    out = subprocess.run(
        ["sh", "-c", script], stdout=subprocess.PIPE, check=True, timeout=30, text=True
    ).stdout
    result = json.loads(out)
    assert {result["me"], result["parent"]} <= set(result["all"])  # the pattern does match them
    assert result["default"] == []


@linux_only
def test_same_process_true_while_alive_false_after_exit_and_reap(spawn):
    child = sleeper(spawn, "same-process")
    ident = wait_for(lambda: procs.identity(child.pid), what="identity")
    assert ident == {
        "pid": child.pid,
        "starttime": procs.get(child.pid).starttime,
        "boot_id": procs.boot_id(),
    }
    assert procs.same_process(ident)
    assert procs.same_process(json.loads(json.dumps(ident)))  # survives a round trip to disk
    child.kill()
    child.wait(timeout=10)
    assert procs.get(child.pid) is None
    assert procs.identity(child.pid) is None
    assert not procs.same_process(ident)


@linux_only
def test_same_process_false_for_reused_pid_or_other_boot(spawn):
    child = sleeper(spawn, "pid-reuse")
    ident = wait_for(lambda: procs.identity(child.pid), what="identity")
    reused = dict(ident, starttime=str(int(ident["starttime"]) + 1))
    assert not procs.same_process(reused)
    other_boot = dict(ident, boot_id="00000000-0000-0000-0000-000000000000")
    assert not procs.same_process(other_boot)
    assert procs.same_process(ident)


@linux_only
def test_zombie_child_is_not_alive_and_not_matched(spawn):
    child = sleeper(spawn, "zombie")
    ident = wait_for(lambda: procs.identity(child.pid), what="identity")
    os.kill(child.pid, signal.SIGKILL)  # not reaped: stays a zombie until child.wait()
    zombie = wait_for(
        lambda: (procs.get(child.pid) or mk(0, 0)).state == "Z" and procs.get(child.pid),
        what="zombie state",
    )
    assert not zombie.alive
    assert procs.identity(child.pid) is None
    assert not procs.same_process(ident)
    table = procs.snapshot()
    assert child.pid in table
    assert child.pid not in [p.pid for p in procs.pgrep(table, ".", exclude=set())]
    child.wait(timeout=10)


@linux_only
def test_pgrep_skips_kernel_threads():
    table = procs.snapshot()
    kthreads = [p.pid for p in table.values() if p.ppid == 2 or p.pid == 2]
    if not kthreads:
        pytest.skip("no kernel threads visible (container)")
    matched = {p.pid for p in procs.pgrep(table, ".", exclude=set())}
    assert not matched & set(kthreads)


def ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@linux_only
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_listening_pids_finds_listener_child(spawn, host):
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    child = spawn([sys.executable, "-c", LISTENER, host], stdout=subprocess.PIPE, text=True)
    port = int(read_line(child))
    assert procs.listening_pids(port) == {child.pid}
    assert procs.port_listening(port)
    assert procs.port_accepts(port, host)
    child.kill()
    child.wait(timeout=10)
    wait_for(lambda: not procs.port_listening(port), what="the port to close")
    assert procs.listening_pids(port) == set()
    assert not procs.port_accepts(port, host)


@linux_only
def test_listening_pids_empty_for_closed_port():
    port = free_port()
    assert procs.listening_pids(port) == set()
    assert not procs.port_listening(port)
    assert not procs.port_accepts(port)


@linux_only
def test_listening_pids_ignores_client_sockets(spawn):
    child = spawn([sys.executable, "-c", LISTENER, "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    port = int(read_line(child))
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        assert procs.listening_pids(port) == {child.pid}  # our connected socket is not LISTEN


@linux_only
def test_descendants_finds_grandchild_and_tree_lines_renders_it(spawn):
    marker = f"marker-{uuid.uuid4()}"
    py = shlex.join([sys.executable, "-c", f"import time; time.sleep(30)  # {marker}"])
    shell = spawn(["sh", "-c", py + "; true"])

    def grandchild():
        table = procs.snapshot()
        # the python itself, not the forked sh that has not exec'd it yet (same cmdline)
        found = [p for p in procs.descendants(table, shell.pid)
                 if marker in p.cmdline and p.argv[:1] == (sys.executable,)]
        return found and (table, found[0])

    table, gc = wait_for(grandchild, what="the grandchild")
    assert gc.ppid == shell.pid
    assert [p.pid for p in procs.descendants(table, os.getpid()) if p.pid == gc.pid] == [gc.pid]
    assert procs.ancestors(table, gc.pid)[:2] == [shell.pid, os.getpid()]
    lines = procs.tree_lines(table, shell.pid)
    assert lines[0].startswith(f"sh({shell.pid}) -c ")
    name = os.path.basename(sys.executable)
    assert lines[1].startswith(f"  └─ {name}({gc.pid}) -c import time;")
    assert len(lines) == 2


@linux_only
def test_mem_available_bytes_is_positive_int():
    value = procs.mem_available_bytes()
    assert isinstance(value, int) and value > 0


# ---------------------------------------------------------------- forced ps / lsof fallback


@linux_only
@needs_ps
def test_ps_fallback_snapshot_finds_current_process_with_sane_start():
    by_proc = procs.snapshot(use_proc=True)
    by_ps = procs.snapshot(use_proc=False)
    me = by_ps[os.getpid()]
    assert me.ppid == os.getppid() and me.pgid == os.getpgid(0) and me.sid == os.getsid(0)
    assert me.uid == os.geteuid()
    assert me.argv[0] == by_proc[os.getpid()].argv[0]
    assert me.starttime == str(int(me.start_epoch))
    assert abs(me.start_epoch - by_proc[os.getpid()].start_epoch) < 3
    assert 1 in by_ps
    # the ps process itself is not reported (it is gone by the time the caller looks)
    assert not [p for p in by_ps.values() if p.ppid == os.getpid() and p.argv[:1] == ("ps",)]


@linux_only
@needs_ps
def test_ps_fallback_without_sess_column_uses_pgid(monkeypatch):
    monkeypatch.setattr(procs, "_ps_sid_col", "nosuchcolumn")
    me = procs.snapshot(use_proc=False)[os.getpid()]
    assert procs._ps_sid_col == "pgid"
    assert me.sid == me.pgid == os.getpgid(0)


@linux_only
@needs_ps
def test_ps_fallback_identity_and_pgrep(spawn, monkeypatch):
    monkeypatch.setattr(procs, "USE_PROC", False)
    marker = f"marker-{uuid.uuid4()}"
    child = sleeper(spawn, marker)
    ident = wait_for(lambda: procs.identity(child.pid), what="identity")
    assert ident["starttime"] == str(int(procs.get(child.pid).start_epoch))
    assert procs.same_process(ident)
    assert not procs.same_process(dict(ident, starttime=str(int(ident["starttime"]) - 5)))
    table = procs.snapshot()
    assert [p.pid for p in procs.pgrep(table, re.escape(marker))] == [child.pid]
    assert not {p.pid for p in procs.pgrep(table, ".")} & procs.self_and_ancestors()
    child.kill()
    child.wait(timeout=10)
    assert procs.get(child.pid) is None
    assert not procs.same_process(ident)


@linux_only
def test_lsof_and_connect_fallback_find_listener(spawn):
    if subprocess.run(["sh", "-c", "command -v lsof"], stdout=subprocess.DEVNULL).returncode:
        pytest.skip("needs lsof")
    child = spawn([sys.executable, "-c", LISTENER, "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    port = int(read_line(child))
    assert procs.listening_pids(port, use_proc=False) == {child.pid}
    assert procs.port_listening(port, use_proc=False)
    closed = free_port()
    assert procs.listening_pids(closed, use_proc=False) == set()
    assert not procs.port_listening(closed, use_proc=False)
