"""Gates on the host, in isolation: LogWatch (offset, truncation, rotation), tail_lines, the HTTP
health check (against a real in-process server), the port gate (a real socket) and the process-tree
gates (literal process tables)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ops.agent import gates
from ops.agent.gates import LogWatch, child_gate, describe_pids, http_check, port_gate, tail_lines, tree_pids
from ops.agent.procs import Proc
from ops.agent.secrets import Secrets

# --- LogWatch ---------------------------------------------------------------------------------


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_logwatch_ignores_lines_written_before_it_was_created(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("booting\nready\n")  # a stale ready line from an earlier run
    watch = LogWatch(str(log))

    assert watch.new_lines() == []
    append(log, "booting\n")
    assert watch.new_lines() == ["booting"]
    assert watch.new_lines() == []


def test_logwatch_keeps_an_unfinished_line_back_until_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("")
    watch = LogWatch(str(log))

    append(log, "rea")
    assert watch.new_lines() == []
    assert watch.pending_partial() == "rea"
    append(log, "dy\nnext")
    assert watch.new_lines() == ["ready"]


def test_logwatch_reads_a_log_created_after_it_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    watch = LogWatch(str(log))
    assert watch.new_lines() == [] and watch.inode is None

    append(log, "first\nready\n")

    assert watch.new_lines() == ["first", "ready"]


def test_logwatch_sees_new_lines_after_truncation(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("old ready line\n" * 10)
    watch = LogWatch(str(log))

    os.truncate(log, 0)  # copytruncate
    append(log, "ready\n")

    assert watch.new_lines() == ["ready"]


def test_logwatch_sees_a_log_truncated_and_regrown_past_the_old_offset(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("x" * 20 + "\n")
    watch = LogWatch(str(log))

    os.truncate(log, 0)
    append(log, "a much longer first line than the old content\nready\n")  # > old size, same inode

    assert watch.new_lines() == ["a much longer first line than the old content", "ready"]


def test_logwatch_follows_rotation_by_rename_into_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("old\n")
    watch = LogWatch(str(log))
    append(log, "before rotation\n")
    writer = open(log, "a")  # noqa: SIM115 - a service whose stdout is the old file
    try:
        os.rename(log, tmp_path / "svc.log.1")
        log.write_text("new file line\n")  # a new inode at the path
        assert watch.new_lines() == ["before rotation", "new file line"]

        writer.write("still writing the old file\n")  # it has not reopened the path
        writer.flush()
        append(log, "ready\n")
        assert watch.new_lines() == ["still writing the old file", "ready"]
    finally:
        writer.close()
        watch.close()


def test_logwatch_close_releases_its_files(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("x\n")
    watch = LogWatch(str(log))
    fd = watch.cur.f.fileno()

    watch.close()

    with pytest.raises(OSError):
        os.fstat(fd)


# --- tail_lines -------------------------------------------------------------------------------


def test_tail_lines_gives_the_last_n_lines(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 10001)))

    assert tail_lines(str(log), 3) == ["line 9998", "line 9999", "line 10000"]
    assert tail_lines(str(log), 0) == []
    assert tail_lines(str(tmp_path / "missing.log"), 5) == []


def test_tail_lines_since_an_offset_holds_only_later_lines(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("stale ready\n")
    offset = log.stat().st_size
    append(log, "starting\nfatal: cannot start\n")

    assert tail_lines(str(log), 20, since=offset) == ["starting", "fatal: cannot start"]
    assert tail_lines(str(log), 1, since=offset) == ["fatal: cannot start"]
    os.truncate(log, 5)  # the offset is past the end now: the whole file is new
    assert tail_lines(str(log), 20, since=offset) == ["stale"]


# --- http_check -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow-body":
            code, body = 200, b"nothing useful"
        elif self.path.startswith("/status/"):
            code, body = int(self.path.rsplit("/", 1)[1]), b"{}"
        elif self.headers.get("X-Token") != "s3cret-token":
            code, body = 401, b'{"error": "bad token"}'
        else:
            code, body = 200, b'{"name": "alice"}'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_check_passes_on_expected_status_and_body(web: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    health = {"url": web + "/lookup", "body": "alice", "header_files": {"X-Token": str(token)}}

    assert http_check(health) == (True, f"{web}/lookup answered 200", 200)


def test_http_check_fails_on_a_wrong_status(web: str) -> None:
    ok, detail, status = http_check({"url": web + "/status/500"})

    assert (ok, status) == (False, 500)
    assert detail == f"{web}/status/500 answered 500, expected 200"


def test_http_check_fails_on_a_wrong_token_read_from_a_file(web: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong\n")

    ok, detail, status = http_check({"url": web + "/lookup", "header_files": {"X-Token": str(token)}})

    assert (ok, status) == (False, 401)
    assert "answered 401" in detail


def test_http_check_fails_when_the_header_file_is_missing(web: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    ok, detail, status = http_check({"url": web + "/lookup", "header_files": {"X-Token": str(missing)}})

    assert (ok, status) == (False, None)
    assert detail == f"header X-Token: cannot read {missing} on the host (missing, unreadable or not UTF-8)"


def test_http_check_fails_when_the_body_does_not_match(web: str) -> None:
    ok, detail, _ = http_check({"url": web + "/slow-body", "body": "alice"})

    assert not ok and detail.endswith("body does not match /alice/")


def test_http_check_fails_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        ok, detail, status = http_check({"url": f"http://127.0.0.1:{port}/"}, timeout=0.5)

    assert (ok, status) == (False, None)
    assert detail.startswith(f"http://127.0.0.1:{port}/: ")


def test_http_check_remembers_header_values_for_redaction(web: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    secrets = Secrets()

    http_check({"url": web + "/lookup", "header_files": {"X-Token": str(token)}}, secrets)

    assert secrets.redact("sent s3cret-token") == "sent ***"


# --- port gate ----------------------------------------------------------------------------------


def test_port_gate_passes_only_for_the_owner() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        table = {}

        assert port_gate(table, port, {os.getpid()}) == (True, f"port {port} held by pid {os.getpid()}")
        ok, detail = port_gate(table, port, {1})
        assert not ok
        assert detail.startswith(f"port {port} held by pid {os.getpid()} (")
        assert detail.endswith("not by this service")
    ok, detail = port_gate(table, port, {os.getpid()})
    assert (ok, detail) == (False, f"port {port}: nothing listening")


# --- process-tree gates (literal tables) ---------------------------------------------------------


def proc(pid: int, ppid: int, argv: str, start: float = 1000.0, state: str = "S") -> Proc:
    return Proc(pid, ppid, pid, pid, 0, state, str(int(start * 100)), start, tuple(argv.split()))


TABLE = {
    10: proc(10, 1, "python3 daemon.py auto", start=1000.0),
    11: proc(11, 10, "python3 api.py --port 8770", start=1000.5),
    12: proc(12, 11, "sleep 5", start=999.0),  # an older process (reparented) counts only without since
    13: proc(13, 1, "python3 api.py --port 8770", start=1000.5),  # not under the daemon
    14: proc(14, 10, "python3 api.py --port 8770", start=1000.5, state="Z"),  # a zombie
}


def test_tree_pids_holds_live_descendants_born_since() -> None:
    assert tree_pids(TABLE, 10) == {10, 11, 12}
    assert tree_pids(TABLE, 10, since_epoch=1000.8) == {10, 11}  # one second of slack
    assert tree_pids(TABLE, 99) == set()


def test_child_gate_finds_the_child_under_its_parent_only() -> None:
    assert child_gate(TABLE, 10, r"api\.py --port 8770") == (True, "pid 11 under 10", [11])
    assert child_gate(TABLE, 10, r"api\.py --port 9999") == (
        False,
        r"no process matching /api\.py --port 9999/ under pid 10",
        [],
    )
    ok, _, pids = child_gate(TABLE, 11, r"api\.py")  # the parent itself never counts as its child
    assert (ok, pids) == (False, [])


def test_describe_pids_keeps_the_end_of_long_command_lines() -> None:
    long = proc(20, 1, "/very/long/interpreter/path/" * 6 + "python3 /srv/app/port_holder.py --port 8770")

    text = describe_pids({20: long}, [20])

    assert text.startswith("pid 20 (/very/long/")
    assert text.endswith("port_holder.py --port 8770)")
    assert len(text) < 180
    assert gates.describe_pids({}, []) == "an unknown process (not visible to this user)"


# --- issue 12: a replaced log carrying old lines; a last line without its newline ---------------


def test_logwatch_skips_old_lines_carried_into_a_file_that_replaces_the_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("run 1 booting\nrun 1 ready\n")
    watch = LogWatch(str(log))
    trimmed = tmp_path / "svc.log.tmp"
    trimmed.write_text(log.read_text().splitlines()[-1] + "\n")  # tail -n 1 log > tmp
    os.rename(trimmed, log)  # && mv tmp log

    assert watch.new_lines() == []
    append(log, "run 2 ready\n")
    assert watch.new_lines() == ["run 2 ready"]


def test_logwatch_skips_old_lines_of_a_log_rewritten_in_place_by_sed(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "ready\nnoise\n")
    watch = LogWatch(str(log))
    append(log, "booting again\n")
    assert watch.new_lines() == ["booting again"]
    # sed -i '/noise/d' log: a new file holding the old lines minus some, and the new one
    kept = [ln for ln in log.read_text().splitlines() if ln != "noise"]
    tmp = tmp_path / "sedXYZ"
    tmp.write_text("\n".join(kept) + "\n")
    os.rename(tmp, log)

    assert watch.new_lines() == []


def test_logwatch_skips_old_lines_written_back_after_a_truncation(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("a long line that came before\n" * 5 + "ready\n")
    watch = LogWatch(str(log))
    tail = log.read_text().splitlines()[-2:]
    log.write_text("\n".join(tail) + "\n")  # cat tmp > log: same inode, old content

    assert watch.new_lines() == []
    append(log, "ready at last\n")
    assert watch.new_lines() == ["ready at last"]


def test_logwatch_reads_a_new_empty_file_that_replaced_the_log_from_its_first_line(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("ready\n")  # the same line the new run will print
    watch = LogWatch(str(log))
    os.rename(log, tmp_path / "svc.log.1")
    log.write_text("")  # a real rotation: a new, empty file
    assert watch.new_lines() == []

    append(log, "ready\n")

    assert watch.new_lines() == ["ready"]


def test_logwatch_counts_new_lines_that_follow_the_carried_block(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("old 1\nold 2\n")
    watch = LogWatch(str(log))
    tmp = tmp_path / "t"
    tmp.write_text("old 2\nnew ready 17:03:01\n")  # rotated with the old tail, then written
    os.rename(tmp, log)

    assert watch.new_lines() == ["new ready 17:03:01"]


def test_log_matcher_matches_a_last_line_without_a_newline_once_it_is_steady(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("")
    matcher = gates.LogMatcher(LogWatch(str(log)), "^ready$")
    append(log, "booting\nready")  # no newline after it, ever

    assert matcher.check() == (None, "ready")  # seen once: it may still be growing
    assert matcher.check() == ("ready", "ready")


def test_log_matcher_does_not_judge_a_line_still_being_written(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("")
    matcher = gates.LogMatcher(LogWatch(str(log)), "^ready$")
    append(log, "ready")
    assert matcher.check()[0] is None
    append(log, "-ish")  # it was not the whole line

    assert matcher.check()[0] is None
    assert matcher.check()[0] is None  # "ready-ish" is steady now but does not match


def test_log_matcher_never_matches_a_copied_unfinished_last_line(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("booting\nready")  # an earlier run's last line, without its newline
    matcher = gates.LogMatcher(LogWatch(str(log)), "^ready$")
    tmp = tmp_path / "t"
    tmp.write_text("ready")  # tail -n 1 log > t && mv t log
    os.rename(tmp, log)

    assert matcher.check()[0] is None
    assert matcher.check()[0] is None
    append(log, "\nready again\n")
    assert matcher.check() == (None, "ready again")  # its newline came: still the copied line
    append(log, "ready\n")
    assert matcher.check()[0] == "ready"  # a new one
