"""A stop waits on pidfds (terminate.py exit_fds): it wakes when a target exits instead of on the
next poll, and a pidfd is only ever held for the very process (pid and start time) it targets."""

from __future__ import annotations

import os
import select
import subprocess

import pytest

from ops.agent import procs
from ops.agent.terminate import exit_fds

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here")


def test_a_pidfd_is_opened_for_the_target_and_turns_readable_when_it_exits() -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        me = procs.get(p.pid)
        assert me is not None
        fds = exit_fds({p.pid: me.starttime})
        assert set(fds) == {p.pid}
        assert select.select([fds[p.pid]], [], [], 0)[0] == []  # alive: not readable
        p.kill()
        assert select.select([fds[p.pid]], [], [], 10)[0] == [fds[p.pid]]
        os.close(fds[p.pid])
    finally:
        p.kill()
        p.wait()


def test_no_pidfd_for_a_pid_that_is_another_process_now_or_gone() -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        assert exit_fds({p.pid: "1"}) == {}  # another start time: not our target
    finally:
        p.kill()
        p.wait()
    assert exit_fds({p.pid: "1"}) == {}  # gone (reaped)
