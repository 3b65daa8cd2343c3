"""Progress inside long steps, as a user sees it: the agent streams what each service is doing
(spawned, gate passed, waiting on X for Ns, stopping) and the CLI shows it while it happens: one
line per event when piped (each line arrives before the step ends), a ticking live table through a
pseudo-terminal. Real `inv` processes, real services, exit codes asserted."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

from tests.integration.rig import PY, REPO, Rig, local_rig_fixture, rig_fixture  # noqa: F401

DELAY = 4.0  # the log gate of `slow` passes this long after the spawn


def slow(rig: Rig) -> dict:
    return {"slow": {"cmd": rig.script("late_ready.py", "--delay", DELAY, python=PY),
                     "ready": {"log": "^ready$"}}}


def stubborn(rig: Rig) -> dict:
    return {"stubborn": {"cmd": rig.script("ignore_term.py", python=PY), "ready": {"log": "ready"},
                         "stop_timeout": 3}}


def timed_lines(rig: Rig, *args: str, timeout: float = 60) -> tuple[int, list[tuple[float, str]]]:
    """Run `inv ARGS` with stdout piped; each line with the time it arrived."""
    env = dict(os.environ, OPS_INVENTORY=str(rig.inv_path))
    proc = subprocess.Popen([PY, "-m", "invoke", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    began, out = time.monotonic(), []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append((time.monotonic() - began, line.rstrip("\n")))
    return proc.wait(timeout), out


def first(lines: list[tuple[float, str]], pattern: str) -> tuple[float, str]:
    for t, line in lines:
        if re.search(pattern, line):
            return t, line
    raise AssertionError(f"no line matches {pattern!r} in:\n" + "\n".join(x for _, x in lines))


def test_piped_start_prints_each_event_as_it_happens(rig: Rig) -> None:
    rig.write(slow(rig))
    try:
        code, lines = timed_lines(rig, "start")
        assert code == 0, lines
        t_spawn, _ = first(lines, r"^box: slow: spawned pid \d+$")
        t_wait, _ = first(lines, r"^box: slow: waiting on gate log for \d+s \(timeout 10s\): no line "
                                  r"matching")
        t_gate, _ = first(lines, r"^box: slow: gate log passed after \d+\.\d+s$")
        t_done, done = first(lines, r"^box: start slow: started pid \d+ in \d+\.\d+s$")
        assert t_spawn <= t_wait <= t_gate <= t_done
        # streamed, not printed at the end: the waiting line came well before the start ended
        assert t_done - t_wait > 1.0, lines
    finally:
        assert rig.inv_cmd("stop").returncode == 0


def test_piped_stop_says_it_is_stopping_before_the_kill(rig: Rig) -> None:
    rig.write(stubborn(rig))
    assert rig.inv_cmd("start").returncode == 0
    code, lines = timed_lines(rig, "stop")
    assert code == 0, lines
    t_stopping, _ = first(lines, r"^box: stubborn: stopping pid \d+: SIGTERM, then SIGKILL after 3s$")
    t_done, done = first(lines, r"^box: stop stubborn: stopped")
    assert t_done - t_stopping > 2.0, lines  # it ignored TERM: the KILL came 3 s later
    assert not re.search(r"(stopped pid \d+).* - \1", done), f"the line repeats itself: {done}"


def run_in_pty(rig: Rig, *args: str, timeout: float = 60, cwd: Path = REPO, inv_path: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[int, str, list[tuple[float, str]]]:
    """Run `inv ARGS` on a pseudo-terminal (160 columns); return its exit code, everything it wrote
    and the chunks with their arrival times."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = dict(os.environ, OPS_INVENTORY=str(inv_path or rig.inv_path), TERM="xterm-256color", COLUMNS="160",
               **(env or {}))
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([PY, "-m", "invoke", *args], cwd=cwd, env=env, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    chunks, began = [], time.monotonic()
    deadline = began + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child side closed
                break
            if not data:
                break
            chunks.append((time.monotonic() - began, data.decode("utf-8", "replace")))
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=10)
    return code, "".join(c for _, c in chunks), chunks


def test_a_terminal_shows_a_ticking_row_per_service_while_a_gate_waits(rig: Rig) -> None:
    rig.write(slow(rig))
    try:
        code, text, chunks = run_in_pty(rig, "start")
        assert code == 0, text
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        assert "waiting on gate log" in plain and "slow" in plain
        # the title's clock ticks while the gate waits: many distinct values, not one frozen one
        ticks = {float(x) for x in re.findall(r"start \((\d+\.\d)s\)", plain)}
        assert len(ticks) >= 4 and max(ticks) >= DELAY - 0.5, sorted(ticks)
        # the service row's own timer ticks too (the "time" column of the slow row)
        row_times = {m for m in re.findall(r"slow\s*│[^│]*│\s*(\d+\.\d)s", plain)}
        assert len(row_times) >= 3, row_times
        assert "started pid" in plain  # the summary after the live view
    finally:
        assert rig.inv_cmd("stop").returncode == 0


def test_a_terminal_shows_the_stop_waiting_for_its_kill(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(stubborn(rig))
    assert rig.inv_cmd("start").returncode == 0
    code, text, _ = run_in_pty(rig, "stop")
    assert code == 0, text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "stopping pid" in plain and "SIGKILL after 3s" in plain
    ticks = {float(x) for x in re.findall(r"stop \((\d+\.\d)s\)", plain)}
    assert len(ticks) >= 4, sorted(ticks)


def test_piped_verify_restart_streams_the_kill_the_new_pid_and_its_gates(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo())
    with rig.session() as s:
        rig.start_ok(s)
    try:
        code, lines = timed_lines(rig, "verify.restart", "demo_api", "--timeout", "20")
        assert code == 0, lines
        t_kill, _ = first(lines, r"^box: demo_api: sent SIGKILL to pid \d+")
        t_new, _ = first(lines, r"^box: demo_api: new pid \d+ under demo_daemon after")
        t_gate, _ = first(lines, r"^box: demo_api: gate \w+ passed after")
        assert t_kill <= t_new <= t_gate
    finally:
        assert rig.inv_cmd("stop").returncode == 0


def ticks_of(title: str, text: str) -> tuple[str, set[float]]:
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return plain, {float(x) for x in re.findall(re.escape(title) + r" \((\d+\.\d)s\)", plain)}


def test_a_terminal_shows_restart_waiting_on_its_gate(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(slow(rig))
    assert rig.inv_cmd("start").returncode == 0
    try:
        code, text, _ = run_in_pty(rig, "restart")
        assert code == 0, text
        plain, ticks = ticks_of("restart", text)
        assert "waiting on gate log" in plain
        assert len(ticks) >= 4, sorted(ticks)
    finally:
        assert rig.inv_cmd("stop").returncode == 0


def test_a_terminal_shows_verify_restart_and_verify_watch_as_they_run(local_rig: Rig) -> None:
    rig = local_rig
    rig.write(rig.verify_demo(daemon_flags="--restart-delay 2"))  # 2 s to watch the restart happen
    with rig.session() as s:
        rig.start_ok(s)
    try:
        code, text, _ = run_in_pty(rig, "verify.restart", "demo_api", "--timeout", "20")
        assert code == 0, text
        plain, ticks = ticks_of("verify.restart", text)
        # the killed child's row ticks while its supervisor takes 2 s to bring it back
        assert "sent SIGKILL to pid" in plain and len(ticks) >= 4, sorted(ticks)
        assert len(set(re.findall(r"sent SIGKILL to pid[^│]*│\s*(\d+\.\d)s", plain))) >= 3

        code, text, _ = run_in_pty(rig, "verify.watch", "--seconds", "3")
        assert code == 0, text
        plain, ticks = ticks_of("verify.watch", text)
        assert "watching:" in plain and "demo_worker=1" in plain
        assert len(ticks) >= 4, sorted(ticks)
        assert "verify.watch samples" in plain  # the samples stay on screen after the live view
    finally:
        assert rig.inv_cmd("stop").returncode == 0
