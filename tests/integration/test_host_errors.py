"""Host-side system errors say what they are: a full disk names the path and what was not
written, exit 1 (not "unreachable"); stop still stops every service when its state cannot be
saved; an unwritable local journal is a warning. Over the real sshd, on a real small tmpfs."""

from __future__ import annotations

from ops import inventory
from tests.harness import wait_for_port_closed
from tests.integration.deploykit import (
    fill,
    make_repo,
    run_inv,
    small_tmpfs,
    states,
    write_inventory,
)


def test_stop_on_a_full_disk_stops_every_service_and_names_what_was_not_written(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    with small_tmpfs(tmp_path / "fs", 2048) as fs:
        inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, state_dir=fs / "state")
        used.append(inv_path)
        r = run_inv(inv_path, repo, "deploy")
        assert r.returncode == 0, r.stdout + r.stderr
        port = inventory.load(inv_path).hosts["box"].service("demo_api").port
        filler = fill(fs)
        try:
            r = run_inv(inv_path, repo, "stop")
            out = r.stdout + r.stderr
            assert r.returncode == 1, out
            assert "unreachable" not in out and "bug in the agent" not in out
            assert "No space left on device" in out
            assert str(fs / "state" / "services") in out  # the path that was not written
            assert "the state of service demo_daemon was not written" in out
            assert "free space" in out
            # every service was stopped all the same: nothing answers, nothing runs
            wait_for_port_closed(port, timeout=10)
            assert set(states(inv_path).values()) <= {"stopped", "dead"}
        finally:
            filler.unlink()
        # with space again, stop converges (and records the stop)
        r = run_inv(inv_path, repo, "stop")
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(states(inv_path).values()) == {"stopped"}


def test_deploy_on_a_full_state_disk_is_a_host_error_not_an_unreachable_host(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    with small_tmpfs(tmp_path / "fs", 1024) as fs:
        inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, state_dir=fs / "state")
        used.append(inv_path)
        (fs / "state").mkdir()
        filler = fill(fs)
        try:
            r = run_inv(inv_path, repo, "deploy")
        finally:
            filler.unlink()
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "unreachable" not in out and "bug in the agent" not in out and "Traceback" not in out
        assert "the deploy lock was not written to " + str(fs / "state" / "deploy.lock") in out
        assert "No space left on device" in out


def test_an_unwritable_local_journal_is_a_warning_after_a_good_deploy(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    r = run_inv(inv_path, repo, "deploy", OPS_JOURNAL="/dev/full")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "warning: the local deploy journal /dev/full was not written (No space left on device)" in r.stderr
