"""Ownership end to end: the tool touches only what it owns, and finds all of it.

Each test is a reproduction of a defect found by using the tool as an operator would (issue 11),
run on the `local` host and over the real sshd: a sibling whose command line extends another's, a
group that outlives its leader, two starts at once, a pre-fork server, a secret file that cannot
be decoded, and two checkouts of one app (staging and prod) as two inventory hosts on one machine,
for one user and for two users.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.harness import pid_alive, processes_with, wait_until
from tests.integration.rig import PY, REPO, Rig, by_name, rig_fixture, toml_tables  # noqa: F401


def idle(rig: Rig, *args: str) -> str:
    return rig.script("idle.py", *args, python=PY)


# --- a sibling service whose command line extends another's ------------------------------------


def test_a_sibling_whose_command_extends_anothers_is_neither_counted_nor_stopped(rig: Rig) -> None:
    rig.write(
        {
            "worker": {"cmd": idle(rig, "--tag", "w"), "ready": {"log": "idle ready"}},
            "worker_high": {
                "cmd": idle(rig, "--tag", "w", "--port", "20195"),
                "ready": {"log": "idle ready"},
            },
        }
    )
    started = by_name(rig.start())
    high = started["worker_high"]["pid"]
    # verify.all (deploy's verify step) sees one instance of each, not "runs twice"
    out = rig.inv_json("verify.all", code=0)
    assert all(c["ok"] for c in out["hosts"][0]["checks"]), out

    stopped = by_name(rig.stop("worker"))["worker"]

    assert stopped["outcome"] == "stopped" and stopped["orphans"] == [], stopped
    assert pid_alive(high), "the sibling was killed"
    assert rig.status("worker_high")["worker_high"]["state"] == "running"


# --- a group that outlives its leader ------------------------------------------------------------


def test_stop_kills_the_live_members_of_a_group_whose_leader_died(rig: Rig) -> None:
    seconds = str(3000 + secrets.randbelow(900))  # a sleep no other test runs
    rig.write({"shell": {"cmd": f"sh -c 'sleep {seconds} & wait'"}})
    leader = by_name(rig.start())["shell"]["pid"]
    sleeper = wait_until(
        lambda: [p for p, c in processes_with(f"sleep {seconds}").items() if c.startswith("sleep")], 5
    )[0]
    try:
        os.kill(leader, signal.SIGKILL)  # behind the tool's back: the group lives on
        wait_until(lambda: not pid_alive(leader), 5)

        status = rig.status()["shell"]
        assert status["state"] == "dead" and f"pid {sleeper}" in status["detail"], status
        # a start now would make a second copy: refused, naming what is left
        refused = by_name(rig.start())["shell"]
        assert refused["outcome"] == "failed" and f"pid {sleeper}" in refused["detail"], refused

        r = by_name(rig.stop())["shell"]

        assert r["outcome"] == "stopped" and sleeper in [o["pid"] for o in r["orphans"]], r
        assert not pid_alive(sleeper)
        again = by_name(rig.start())["shell"]
        assert again["outcome"] == "started"
        copies = wait_until(
            lambda: [p for p, c in processes_with(f"sleep {seconds}").items() if c.startswith("sleep")], 5
        )
        assert len(copies) == 1
    finally:
        for pid, cmd in processes_with(f"sleep {seconds}").items():
            if cmd.startswith("sleep"):
                os.kill(pid, signal.SIGKILL)


# --- one mutating operation per host at a time -----------------------------------------------------


def _slow_service(rig: Rig, delay: float) -> None:
    rig.write(
        {
            "slow": {
                "cmd": rig.script("late_ready.py", "--delay", delay, python=PY),
                "ready": {"log": "^ready"},
            }
        },
        ready_timeout=30,
    )


def test_a_second_start_while_the_first_is_gating_is_refused_and_one_instance_runs(rig: Rig) -> None:
    _slow_service(rig, 4.0)
    first = subprocess.Popen(
        [PY, "-m", "invoke", "start", "--json"],
        cwd=REPO,
        text=True,
        env=dict(os.environ, OPS_INVENTORY=str(rig.inv_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: rig.state("slow").get("gating"), 30)
        # status never says "running and healthy" for a start still waiting on its gates
        r = rig.inv_cmd("status", "--json")  # its exit code says "not running and healthy"
        assert json.loads(r.stdout)["hosts"][0]["services"][0]["state"] == "starting", r.stdout

        second = rig.inv_cmd("start")

        assert second.returncode == 4, second.stdout + second.stderr
        assert "busy" in second.stdout + second.stderr and "start" in second.stdout + second.stderr
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 0, stdout + stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert len(rig.pids_of("late_ready.py")) == 1
    # with --lock-wait the second one waits its turn, then finds it running and healthy
    third = rig.inv_cmd("start", "--lock-wait", "30")
    assert third.returncode == 0 and "already" in third.stdout, third.stdout + third.stderr
    assert len(rig.pids_of("late_ready.py")) == 1


def test_two_starts_at_once_leave_exactly_one_instance(rig: Rig) -> None:
    _slow_service(rig, 1.0)
    env = dict(os.environ, OPS_INVENTORY=str(rig.inv_path))
    runs = [
        subprocess.Popen(
            [PY, "-m", "invoke", "start", "--lock-wait", "60"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=90)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    assert sum("already" in o for o in outs) == 1, outs
    assert len(rig.pids_of("late_ready.py")) == 1


# --- instances, not processes --------------------------------------------------------------------


def test_a_pre_fork_server_is_one_instance_and_a_second_copy_is_two(rig: Rig) -> None:
    rig.write(
        {
            "prefork": {
                "cmd": idle(rig, "--fork", "2"),
                "ready": {"log": "idle ready"},
                "max_instances": 1,
                "checks": ["tree", "instances", "orphans"],
            }
        }
    )
    rig.start()
    wait_until(lambda: len(rig.pids_of("idle.py")) == 3, 5)
    out = rig.inv_json("verify.all", code=0)
    assert all(c["ok"] for c in out["hosts"][0]["checks"]), out
    watch = rig.inv_json("verify.watch", "--seconds", "1", code=0)
    assert watch["hosts"][0]["checks"][0]["counts"][0] == 1, watch

    # broken twin: a second copy started by hand from the same checkout is a second instance
    copy = subprocess.Popen(
        idle(rig, "--fork", "2").split(), cwd=rig.checkout, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(lambda: len(rig.pids_of("idle.py")) == 6, 5)
        out = rig.inv_json("verify.all", code=1)
        inst = [c for c in out["hosts"][0]["checks"] if c["name"] == "instances"][0]
        assert not inst["ok"] and "2 instance(s)" in inst["detail"], inst
    finally:
        os.killpg(copy.pid, signal.SIGKILL)
        copy.wait(5)


# --- a secret file that cannot be decoded ----------------------------------------------------------


def test_an_undecodable_env_file_fails_its_own_service_only(rig: Rig) -> None:
    bad = rig.secret_dir / "latin1.env"
    bad.write_bytes(b"PASSWORD=caf\xe9-secret\n")
    rig.write(
        {
            "good": {"cmd": idle(rig, "good"), "ready": {"log": "idle ready"}, "env_file": str(rig.env_file)},
            "bad": {"cmd": idle(rig, "bad"), "ready": {"log": "idle ready"}, "env_file": str(bad)},
        }
    )
    started = by_name(rig.start("good"))
    assert started["good"]["outcome"] == "started"
    assert rig.status()["good"]["state"] == "running"
    failed = by_name(rig.start("bad"))["bad"]
    assert failed["outcome"] == "failed" and f"env_file {bad} is not UTF-8" in failed["detail"], failed
    out = rig.inv_json("verify.all", code=1)  # bad is not running: its tree check fails, good's passes
    by = {(c["service"], c["name"]): c for c in out["hosts"][0]["checks"]}
    assert by[("good", "tree")]["ok"] and not by[("bad", "tree")]["ok"]
    stopped = by_name(rig.stop())
    assert stopped["good"]["outcome"] == "stopped"


# --- two checkouts of one app on one machine: staging and prod --------------------------------------


APP = """\
import os, sys, time
print("auto-answering pid %d from %s" % (os.getpid(), os.getcwd()), flush=True)
while True:
    time.sleep(0.2)
"""


def _checkout(root: Path, python: str) -> Path:
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "phone_call.py").write_text(APP)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(python)
    return root


def _two_checkouts(
    tmp: Path, sshd, match: str | None, prod_user: str | None, prod_root: Path, python: str
) -> Path:
    staging = _checkout(tmp / "staging", python)
    prod = _checkout(prod_root, python)
    service = {
        "cmd": ".venv/bin/python scripts/phone_call.py auto",
        "ready": {"log": "auto-answering"},
        "checks": ["tree", "orphans"],
    }
    if match:
        service["match"] = match
    tables = {
        "ssh": {"config": str(sshd.ssh_config_path)},
        "defaults": {"ready_timeout": 15, "stop_timeout": 3, "python": python},
        "hosts.staging": {
            "ssh": "opstest",
            "path": str(staging),
            "state_dir": str(tmp / "state-staging"),
            "services": ["phone"],
        },
        "hosts.prod": {
            "ssh": f"{prod_user}@opstest" if prod_user else "opstest",
            "path": str(prod),
            "state_dir": str(prod_root.parent / "state-prod"),
            "services": ["phone"],
        },
        "services.phone": service,
    }
    path = tmp / "hosts.toml"
    path.write_text(toml_tables(tables))
    return path


def _inv(inv_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "invoke", *args],
        cwd=REPO,
        env=dict(os.environ, OPS_INVENTORY=str(inv_path)),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def _json(inv_path: Path, *args: str, code: int = 0) -> dict:
    r = _inv(inv_path, *args, "--json")
    assert r.returncode == code, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)


def _prod_pids(prod_root: Path) -> list[int]:
    return sorted(p for p, c in processes_with(f"{prod_root}/scripts/phone_call.py").items())


def _staging_and_prod(inv_path: Path, prod_root: Path, tmp: Path, foreign_expected: bool) -> None:
    _json(inv_path, "start", "--host", "prod")
    prod_pid = wait_until(lambda: _prod_pids(prod_root), 10)[0]
    # staging starts although prod's copy of the same app runs on the same machine
    _json(inv_path, "start", "--host", "staging")
    staging_pids = sorted(processes_with(f"{tmp}/staging/scripts/phone_call.py"))
    assert len(staging_pids) == 1
    out = _json(inv_path, "verify.all", "--host", "staging")
    assert all(c["ok"] for c in out["hosts"][0]["checks"]), out
    out = _json(inv_path, "verify.all", "--host", "prod")
    assert all(c["ok"] for c in out["hosts"][0]["checks"]), out

    out = _json(inv_path, "stop", "--host", "staging")

    r = out["hosts"][0]["services"][0] if "services" in out["hosts"][0] else out["hosts"][0]
    text = json.dumps(out)
    assert pid_alive(prod_pid), f"prod was killed by a stop of staging: {text}"
    assert not any(pid_alive(p) for p in staging_pids)
    assert str(prod_pid) not in json.dumps(r.get("orphans", [])) and "still running" not in text
    if foreign_expected:
        assert "not touched" in text and str(prod_root) in text, text
    _json(inv_path, "stop", "--host", "prod")
    assert not pid_alive(prod_pid)


@pytest.mark.parametrize("match", [None, "phone_call\\.py auto"], ids=["default-match", "loose-match"])
def test_staging_and_prod_checkouts_of_one_app_never_touch_each_other(tmp_path, sshd, match) -> None:
    prod_root = tmp_path / "prod"
    inv_path = _two_checkouts(tmp_path, sshd, match, None, prod_root, PY)
    try:
        _staging_and_prod(inv_path, prod_root, tmp_path, foreign_expected=match is not None)
    finally:
        for root in (tmp_path / "staging", prod_root):
            for pid in processes_with(f"{root}/scripts/phone_call.py"):
                os.kill(pid, signal.SIGKILL)


PROD_USER = "opsprod"


@pytest.fixture
def prod_user(sshd) -> str:
    """A second local user the test sshd lets in with the same throwaway key (root only)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the two-user test must not skip", pytrace=False)
        pytest.skip("creating a second user needs root")
    if shutil.which("useradd") is None:
        pytest.fail("useradd is missing (package passwd)")
    try:
        pwd.getpwnam(PROD_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", PROD_USER], check=True, capture_output=True)
    # unlocked, with no password: only the test's key lets it in
    subprocess.run(["usermod", "-p", "*", PROD_USER], check=True, capture_output=True)
    entry = pwd.getpwnam(PROD_USER)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(Path(str(sshd.key_path) + ".pub").read_text())
    for path in (ssh_dir, keys):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return PROD_USER


def test_staging_and_prod_as_two_users_never_touch_each_other(tmp_path, sshd, prod_user) -> None:
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")
    assert python and not python.startswith("/root"), "the second user needs a python it can run"
    home = Path(pwd.getpwnam(prod_user).pw_dir)
    prod_root = home / f"ops-test-{secrets.token_hex(4)}" / "prod"
    try:
        inv_path = _two_checkouts(tmp_path, sshd, "phone_call\\.py auto", prod_user, prod_root, python)
        uid = pwd.getpwnam(prod_user).pw_uid
        for dirpath, _dirs, _files in os.walk(prod_root.parent):
            os.chown(dirpath, uid, uid)
            for f in _files:
                os.lchown(os.path.join(dirpath, f), uid, uid)
        os.lchown(prod_root / ".venv" / "bin" / "python", uid, uid)
        # staging's python must be one root-owned tree can run; the same for both hosts
        _staging_and_prod(inv_path, prod_root, tmp_path, foreign_expected=True)
    finally:
        for pid in processes_with(f"{prod_root}/scripts/phone_call.py"):
            os.kill(pid, signal.SIGKILL)
        for pid in processes_with(f"{tmp_path}/staging/scripts/phone_call.py"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(prod_root.parent, ignore_errors=True)


def test_foreign_processes_are_reported_never_signalled(tmp_path, sshd) -> None:
    """A loose pattern matches a process of this user that runs from elsewhere: stop names it and
    leaves it alone, orphans does not count it, start is not refused because of it."""
    elsewhere = tmp_path / "elsewhere"
    _checkout(elsewhere, PY)
    stranger = subprocess.Popen(
        [PY, "scripts/phone_call.py", "auto"],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        inv_path = _two_checkouts(tmp_path, sshd, "phone_call\\.py auto", None, tmp_path / "prod", PY)
        wait_until(lambda: pid_alive(stranger.pid), 5)
        _json(inv_path, "start", "--host", "staging")
        out = _json(inv_path, "verify.orphans", "--host", "staging")
        assert "not touched" in json.dumps(out)
        _json(inv_path, "stop", "--host", "staging")
        assert pid_alive(stranger.pid)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait(5)
        for pid in processes_with(f"{tmp_path}/staging/scripts/phone_call.py"):
            os.kill(pid, signal.SIGKILL)


def test_the_marker_is_in_the_environment_not_in_argv(rig: Rig) -> None:
    rig.write({"worker": {"cmd": idle(rig, "--tag", "m"), "ready": {"log": "idle ready"}}})
    pid = by_name(rig.start())["worker"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    marker = [e for e in environ if e.startswith(b"OPS_OWNER=")]
    assert len(marker) == 1 and str(rig.state_dir.resolve()).encode() in marker[0]
    assert b"OPS_OWNER" not in Path(f"/proc/{pid}/cmdline").read_bytes()
