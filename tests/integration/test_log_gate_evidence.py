"""Issue 12, items 2 and 6, end to end: the log gate reads only what the service wrote during
this start, even when its log is replaced by a file carrying old lines (tail + mv, sed -i), and it
matches a last line that has no newline. Real services on `local` and on the sshd host."""

from __future__ import annotations

import pytest

from tests.integration.rig import Rig, by_name, rig_fixture  # noqa: F401

FAIL_FAST = 2.0  # ready_timeout (s) for starts that are meant to fail
EARLIER_RUN = "booting\nready\nserving\nserving\n"  # an earlier run got ready; this one may not


def write_svc(rig: Rig, mode: str, ready: str = "^ready$", timeout: float = FAIL_FAST) -> None:
    log = rig.log("svc")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(EARLIER_RUN)
    rig.write({"svc": {"cmd": rig.script("log_tricks.py", mode, "--log", log),
                       "ready": {"log": ready, "timeout": timeout}}})


@pytest.mark.parametrize("mode", ["tail", "sed"])
def test_a_log_replaced_with_old_lines_during_the_start_does_not_pass_the_log_gate(
        rig: Rig, mode: str) -> None:
    write_svc(rig, mode)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "failed", r
    assert r["failed_gate"] == "log"
    assert "no line matching /^ready$/" in r["detail"] and r["detail"].startswith("timed out")
    assert "ready" in rig.log("svc").read_text(), "the old ready line is in the replaced file"
    rig.wait_none_running(timeout=5)


def test_a_rotation_to_a_new_empty_log_passes_on_its_first_new_line(rig: Rig) -> None:
    # the service writes its line into the new file at once, so the gate may first see the file
    # with the line in it: a line that is not a copy of an old one counts (a line identical to an
    # old one, written before the gate looked, cannot be told from a copy: see gates._FileTail)
    write_svc(rig, "rotate", ready="^ready", timeout=20)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started", r
    assert r["gates"][0]["detail"].startswith("log line matched: ready (pid ")
    rig.stop()


def test_a_new_ready_line_in_the_old_file_still_passes_after_a_trim(rig: Rig) -> None:
    write_svc(rig, "tail-then-ready", timeout=20)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started", r
    rig.stop()


def test_a_last_ready_line_without_a_newline_passes_the_log_gate(rig: Rig) -> None:
    write_svc(rig, "no-newline", timeout=20)

    r = by_name(rig.start())["svc"]

    assert r["outcome"] == "started", r
    assert r["gates"][0]["detail"] == "log line matched: ready"
    rig.stop()
