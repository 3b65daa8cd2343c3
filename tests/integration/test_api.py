"""ops.api end to end: sessions, commands, files and the built-in operations as library calls, on
the `local` host and on the real sshd host (tests/integration/rig.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ops import api
from ops.control import PhaseResult
from ops.errors import ActionFailed
from ops.verify import VerifyReport
from tests.integration.rig import Rig, local_rig_fixture, rig_fixture, toml_tables  # noqa: F401


def test_run_returns_exit_code_output_and_duration_with_cwd_under_the_checkout(rig: Rig) -> None:
    rig.write({})
    (rig.checkout / "sub").mkdir()
    with api.session("box", rig.inv) as s:
        r = s.run(["sh", "-c", 'pwd; echo "$GREETING" >&2; exit 3'], cwd="sub", env={"GREETING": "hi there"})
        assert (r.host, r.exit_code, r.ok, r.failed, r.timed_out) == ("box", 3, False, True, False)
        assert r.stdout.strip() == str(rig.checkout / "sub")
        assert r.stderr.strip() == "hi there"
        assert r.command == "sh -c 'pwd; echo \"$GREETING\" >&2; exit 3'"
        assert 0 <= r.duration < 30
        assert not r
        # a string runs through sh, in the checkout by default
        r = s.run("echo $((6 * 7)) && pwd")
        assert r.ok and r.stdout.split() == ["42", str(rig.checkout)]


def test_run_check_raises_command_failed_with_the_result_and_a_timeout_kills_the_command(rig: Rig) -> None:
    rig.write({})
    with api.session("box", rig.inv) as s:
        with pytest.raises(api.CommandFailed) as info:
            s.run(["sh", "-c", "echo boom >&2; exit 4"], check=True)
        assert info.value.result.exit_code == 4
        assert info.value.exit_code == 1
        assert "exit 4: boom" in info.value.message
        marker = rig.root / "after-timeout"
        r = s.run(["sh", "-c", f"sleep 30; touch {marker}"], timeout=1)
        assert r.timed_out and not r.ok
        assert r.duration < 20
        assert not marker.exists()
        assert not rig.pids_of("sleep 30")


def test_run_output_is_bounded_to_its_tail(local_rig: Rig) -> None:
    rig = local_rig
    rig.write({})
    with api.session("box", rig.inv) as s:
        r = s.run(["python3", "-c", "for i in range(100000): print('line', i)"], max_output=1000)
    assert r.ok and r.truncated
    assert len(r.stdout) <= 1000
    assert r.stdout.splitlines()[-1] == "line 99999"
    assert r.stdout.splitlines()[0].startswith("line ")  # a cut first line is dropped


def test_run_output_and_read_file_are_redacted_of_the_hosts_secrets(rig: Rig) -> None:
    rig.write(rig.demo())
    with api.session("box", rig.inv) as s:
        r = s.run(["cat", str(rig.env_file)])  # the agent's exec redacts (ops/agent/execrun.py)
        assert rig.token not in r.stdout and "DEMO_TOKEN=***" in r.stdout
        r = s.run(["sh", "-c", f"cat {rig.token_file} >&2; exit 1"])
        assert r.stderr == "***\n" and rig.token not in r.summary()
    with api.session("box", rig.inv) as s:
        assert rig.token not in (s.read_file(str(rig.token_file)) or "")


def test_read_file_is_redacted_and_write_file_is_atomic_bounded_and_under_the_checkout(rig: Rig) -> None:
    rig.write(rig.demo())
    with api.session("box", rig.inv) as s:
        written = s.write_file("notes/today.txt", "first\n", make_dirs=True)
        assert written == str(rig.checkout / "notes" / "today.txt")
        assert s.read_file("notes/today.txt") == "first\n"
        os.chmod(written, 0o600)
        s.write_file("notes/today.txt", b"second\n")  # replaced whole, mode kept
        assert Path(written).read_text() == "second\n"
        assert oct(Path(written).stat().st_mode & 0o777) == "0o600"
        assert [p.name for p in (rig.checkout / "notes").iterdir()] == ["today.txt"]  # no temp left
        # the token read back through read_file is redacted (it is a health header file)
        assert s.read_file(str(rig.token_file)) == "***\n"
        assert s.read_file("missing.txt", missing_ok=True) is None
        with pytest.raises(ActionFailed, match="missing.txt does not exist"):
            s.read_file("missing.txt")
        (rig.checkout / "big.bin").write_bytes(b"x" * 5000)
        with pytest.raises(ActionFailed, match=r"big.bin is 5000 bytes, more than the 100 bytes"):
            s.read_file("big.bin", max_bytes=100)
        with pytest.raises(ActionFailed, match="is a directory"):
            s.read_file("notes")
        with pytest.raises(ActionFailed, match="cannot write .*no-such-dir"):
            s.write_file("no-such-dir/x.txt", "x")


def test_built_in_operations_return_the_objects_the_tasks_render(rig: Rig) -> None:
    rig.write(rig.verify_demo())
    try:
        with api.session("box", rig.inv) as s:
            started = s.start()
            assert isinstance(started, PhaseResult) and started.ok, started.services
            rows = {r["name"]: r for r in s.status()}
            assert rows["demo_api"]["state"] == "running"
            report = s.verify_all()
            assert isinstance(report, VerifyReport) and report.ok, report.summary()
            assert s.verify_tree(["demo_api"]).ok
            assert s.verify_health(["demo_api"]).ok
            assert any("worker" in line for line in s.logs("demo_worker", 20))
            stopped = s.stop()
            assert stopped.ok
            assert {r["name"]: r["state"] for r in s.status()}["demo_daemon"] == "stopped"
    finally:
        rig.stop()


def test_on_hosts_runs_in_parallel_and_keys_outcomes_by_host_name_with_partial_failure(
    tmp_path: Path, sshd
) -> None:
    checkout = tmp_path / "co"
    checkout.mkdir()
    text = toml_tables({
        "ssh": {"config": str(sshd.ssh_config_path)},
        "hosts.here": {"local": True, "path": str(checkout), "state_dir": str(tmp_path / "s1"),
                       "services": []},
        "hosts.there": {"ssh": "opstest", "path": str(checkout), "state_dir": str(tmp_path / "s2"),
                        "services": []},
        "hosts.gone": {"ssh": "opsdead", "path": "/srv", "services": [], "connect_timeout": 3},
        # a second inventory host on the same sshd: outcomes are keyed by name, never by connection
        "hosts.twin": {"ssh": "opstest-twin", "path": str(checkout), "state_dir": str(tmp_path / "s3"),
                       "services": []},
    })
    (tmp_path / "hosts.toml").write_text(text)
    inv = api.load_inventory(tmp_path / "hosts.toml")
    outcomes = api.on_hosts(lambda s: s.run(["echo", s.name]).stdout.strip(), "all", inv)
    assert list(outcomes) == ["here", "there", "gone", "twin"]
    assert [outcomes[h].value for h in ("here", "there", "twin")] == ["here", "there", "twin"]
    assert not outcomes["gone"].ok and outcomes["gone"].error.exit_code == 3
    # a step journals every host, the unreachable one included
    os.environ["OPS_JOURNAL"] = str(tmp_path / "journal.jsonl")
    try:
        steps = api.run_step("hostname", lambda s: s.run(["hostname"]), ["here", "there", "gone"], inv)
    finally:
        del os.environ["OPS_JOURNAL"]
    assert steps["here"].value.ok and steps["here"].value.journaled
    lines = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [(e["host"], e["outcome"], e["step"]) for e in lines] == [
        ("here", "ok", "hostname"), ("there", "ok", "hostname"), ("gone", "unreachable", "hostname")]
    assert len({e["run_id"] for e in lines}) == 1
