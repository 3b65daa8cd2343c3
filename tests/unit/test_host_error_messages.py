"""An agent's system error reads as what it is: the path, what was not written, why, and what to
do (exit 1, the host answered); never 'unreachable' or 'a bug in the agent'."""

from __future__ import annotations

import errno

from ops.agent import server
from ops.agent.state import WriteFailed
from ops.agentclient import host_error


def event_for(exc: BaseException) -> dict:
    return {"event": "error", "type": type(exc).__name__, "message": str(exc), **server.os_error_fields(exc)}


def test_a_full_disk_names_the_path_and_what_was_not_written():
    exc = WriteFailed("/srv/state/services/phone.json", "the state of service phone",
                      OSError(errno.ENOSPC, "No space left on device"))
    err = host_error("panda", "stop", event_for(exc))
    assert err.exit_code == 1
    assert err.message == ("panda: 'stop' failed: the state of service phone was not written to "
                           "/srv/state/services/phone.json: No space left on device")
    assert "free space" in err.advice and "/srv/state/services/phone.json" in err.advice


def test_a_permission_error_says_what_to_make_writable():
    exc = PermissionError(errno.EACCES, "Permission denied", "/srv/x")
    err = host_error("pi", "deploy_lock", event_for(exc))
    assert err.message == "pi: 'deploy_lock' failed on the host: /srv/x: Permission denied"
    assert "writable" in err.advice


def test_other_exceptions_carry_no_os_error_fields():
    assert server.os_error_fields(ValueError("x")) == {}
