"""Pure parts of issue 13: the rollback walk over the history, --to resolution, keepalive settings."""

from __future__ import annotations

from ops.deploy import resolve_to, rollback_target
from ops.transport import DEFAULT_ALIVE_COUNT, DEFAULT_ALIVE_INTERVAL, keepalive_settings

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


def hist(*commits: str) -> list[dict]:
    return [{"commit": c, "via": "deploy", "run_id": str(i)} for i, c in enumerate(commits)]


def test_rollback_walks_back_over_the_current_and_the_rolled_back_commits():
    assert rollback_target({"current": C, "history": hist(A, B, C)}) == B
    # after one rollback: C rolled back, B current again (appended by the rollback)
    assert rollback_target({"current": B, "history": hist(A, B, C, B), "rolled_back": [C]}) == A
    # after a second one there is nothing good left
    assert rollback_target({"current": A, "history": hist(A, B, C, B, A), "rolled_back": [B, C]}) is None


def test_a_failed_deploy_that_was_rolled_back_is_never_a_rollback_target():
    assert rollback_target({"current": B, "history": hist(A, B), "rolled_back": [D]}) == A
    assert rollback_target({"current": A, "history": hist(D, A), "rolled_back": [D]}) is None


def test_records_from_before_the_history_fall_back_to_previous():
    assert rollback_target({"current": B, "previous": A}) == A
    assert rollback_target({"current": B}) is None
    assert rollback_target({}) is None


def test_to_takes_a_full_id_or_a_unique_prefix_of_the_history():
    record = {"history": hist(A, B, "ab" + "0" * 38)}
    assert resolve_to(C, record) == C
    assert resolve_to("bbbb", record) == B
    assert resolve_to("a", record) is None  # ambiguous
    assert resolve_to("ffff", record) is None


def test_keepalive_settings_come_from_ssh_config_with_a_sane_default():
    assert keepalive_settings({}) == (DEFAULT_ALIVE_INTERVAL, DEFAULT_ALIVE_COUNT)
    assert keepalive_settings({"serveraliveinterval": "2", "serveralivecountmax": "4"}) == (2.0, 4)
    # 0 (OpenSSH: off) and garbage keep the default: a dead link must be noticed
    assert keepalive_settings({"serveraliveinterval": "0"}) == (DEFAULT_ALIVE_INTERVAL, DEFAULT_ALIVE_COUNT)
    assert keepalive_settings({"serveraliveinterval": "x"})[0] == DEFAULT_ALIVE_INTERVAL
