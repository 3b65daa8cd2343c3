"""`inv deploy` end to end: real git repos, the real sshd, real demo services on real ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ops import control, deploy, inventory
from ops.session import connect
from tests.harness import deployed_demo_services, free_port, git, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICES = deployed_demo_services()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch project holding the demo services, with one commit."""
    r = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "examples" / "demo", r / "examples" / "demo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    return r


def write_inventory(tmp_path: Path, sshd, hosts: dict[str, str], extra: str = "") -> Path:
    """hosts: name -> ssh alias ('' for local). Each host gets its own checkout, state and port."""
    lines = [f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n'] if sshd else []
    for name, alias in hosts.items():
        via = f'ssh = "{alias}"' if alias else "local = true"
        lines.append(
            f"[hosts.{name}]\n{via}\npath = \"{tmp_path / 'hosts' / name / 'checkout'}\"\n"
            f"state_dir = \"{tmp_path / 'hosts' / name / 'state'}\"\nconnect_timeout = 3\n"
            f"services = [\"demo_daemon\", \"demo_worker\"]\n"
            f"overrides.demo_api.port = {free_port()}\n{extra}\n"
        )
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + SERVICES)
    return path


def run_inv(inv_path: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPS_INVENTORY=str(inv_path), OPS_JOURNAL=str(inv_path.parent / "journal.jsonl"))
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def health_commit(inv: inventory.Inventory, host: str) -> str:
    port = inv.hosts[host].service("demo_api").port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
        return json.loads(resp.read())["commit"]


@pytest.fixture
def cleanup_hosts():
    """Stop every host of the inventories a test used, whatever happened."""
    used: list[Path] = []
    yield used.append
    for path in used:
        inv = inventory.load(path)
        for h in inv.hosts.values():
            try:
                with connect(inv, h) as s:
                    control.stop(s)
            except Exception:
                pass


@pytest.fixture(params=["local", "ssh"])
def one_host(request, tmp_path, sshd, cleanup_hosts) -> tuple[Path, str]:
    alias = "" if request.param == "local" else "opstest"
    path = write_inventory(tmp_path, sshd, {"box": alias})
    cleanup_hosts(path)
    return path, "box"


def test_deploy_runs_the_new_commit_and_a_broken_commit_rolls_back(one_host, repo):
    inv_path, host = one_host
    first = git(repo, "rev-parse", "HEAD")
    r = run_inv(inv_path, repo, "deploy", "--host", host)
    assert r.returncode == 0, r.stdout + r.stderr
    inv = inventory.load(inv_path)
    assert health_commit(inv, host) == first

    (repo / "examples/demo/NOTE").write_text("second\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    r = run_inv(inv_path, repo, "deploy", "--host", host)
    assert r.returncode == 0, r.stdout + r.stderr
    assert health_commit(inv, host) == second

    daemon = repo / "examples/demo/daemon.py"
    daemon.write_text("import sys\nprint('boom: broken on purpose', flush=True)\nsys.exit(7)\n")
    git(repo, "commit", "-qam", "broken")
    r = run_inv(inv_path, repo, "deploy", "--host", host)
    assert r.returncode == deploy.EXIT_ROLLED_BACK, r.stdout + r.stderr
    assert "rolled-back" in r.stdout
    assert "exited with code 7" in r.stdout
    # the previous commit is running and healthy again
    assert health_commit(inv, host) == second
    with connect(inv, inv.hosts[host]) as s:
        states = {x["name"]: x["state"] for x in control.status(s)}
        entries = deploy.journal(s)
    assert set(states.values()) == {"running"}
    assert [e["outcome"] for e in entries] == ["ok", "ok", "rolled-back"]
    assert entries[-1]["from"] == second and entries[-1]["steps"][2]["name"] == "start"
    local_journal = (inv_path.parent / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["outcome"] for x in local_journal] == ["ok", "ok", "rolled-back"]


def test_deploy_purges_pycache_on_the_host(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    stale = tmp_path / "hosts/box/checkout/examples/demo/__pycache__"
    stale.mkdir(exist_ok=True)
    (stale / "daemon.cpython-311.pyc").write_bytes(b"stale")
    (tmp_path / "hosts/box/checkout/old.pyc").write_bytes(b"stale")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not stale.exists()
    assert not (tmp_path / "hosts/box/checkout/old.pyc").exists()


def test_a_dirty_working_tree_is_refused_unless_allowed(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": ""})
    cleanup_hosts(inv_path)
    (repo / "examples/demo/api.py").write_text("# local edit\n", encoding="utf-8")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 2
    assert "uncommitted changes" in r.stderr and "--allow-dirty" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "hosts/box/checkout").exists()
    git(repo, "checkout", "--", ".")
    assert run_inv(inv_path, repo, "deploy", "--allow-dirty").returncode == 0


def test_a_second_deploy_is_refused_while_the_lock_is_held(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts["box"]) as holder:
        got = holder.call("deploy_lock", {"host": holder.host_args(), "owner": {
            "user": "alice", "machine": "laptop", "run_id": "r-1", "commit": "abc"}})
        assert got["acquired"]
        r = run_inv(inv_path, repo, "deploy")
        assert r.returncode == 4, r.stdout + r.stderr
        assert "deploy lock held by alice@laptop" in r.stdout
        assert not (tmp_path / "hosts/box/checkout").exists()
        # unlock refuses to break a live holder's lock
        r = run_inv(inv_path, repo, "unlock")
        assert r.returncode == 4 and "still running" in r.stderr
    # the holder's agent exited: its lock went with it
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stale_lock_is_reported_and_can_be_broken(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    state = tmp_path / "hosts/box/state"
    state.mkdir(parents=True)
    (state / "deploy.lock").write_text(json.dumps({
        "user": "bob", "machine": "old", "agent_pid": 999999, "agent_starttime": "1",
        "boot_id": "gone", "since": 1.0}))
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 4
    assert "stale" in r.stdout and "inv unlock --host box" in r.stdout
    r = run_inv(inv_path, repo, "unlock")
    assert r.returncode == 0 and "lock released" in r.stdout
    assert run_inv(inv_path, repo, "deploy").returncode == 0


def test_lock_wait_waits_for_the_holder_to_finish(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": ""})
    cleanup_hosts(inv_path)
    inv = inventory.load(inv_path)
    holder = connect(inv, inv.hosts["box"])
    s = holder.__enter__()
    assert s.call("deploy_lock", {"host": s.host_args(), "owner": {"user": "x"}})["acquired"]
    env = dict(os.environ, OPS_INVENTORY=str(inv_path), OPS_JOURNAL=str(tmp_path / "j.jsonl"))
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "deploy",
                             "--lock-wait", "20"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "hosts/box/state/deploy.lock"
        # the waiting deploy has not delivered anything while the lock is held
        assert not (tmp_path / "hosts/box/checkout").exists()
        holder.__exit__(None, None, None)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert not lock.exists()


def test_non_fast_forward_on_the_host_is_refused_in_pull_mode(tmp_path, sshd, repo, cleanup_hosts):
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    checkout = tmp_path / "hosts/box/checkout"
    checkout.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(checkout)], check=True)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"}, extra='source = "pull"')
    cleanup_hosts(inv_path)
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    # someone committed on the host: its history diverges from ours
    (checkout / "hotfix").write_text("x")
    git(checkout, "add", "hotfix")
    git(checkout, "commit", "-qm", "hotfix on the box")
    (repo / "NEXT").write_text("y")
    git(repo, "add", "NEXT")
    git(repo, "commit", "-qm", "next")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode != 0
    assert "not a fast-forward" in r.stdout
    assert "hotfix on the box" in git(checkout, "log", "-1", "--format=%s")


def test_dirty_checkout_on_the_host_is_refused(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    edited = tmp_path / "hosts/box/checkout/examples/demo/worker.py"
    edited.write_text(edited.read_text() + "\n# edited on the box\n")
    (repo / "X").write_text("x")
    git(repo, "add", "X")
    git(repo, "commit", "-qm", "x")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode != 0
    assert "local changes" in r.stdout and "worker.py" in r.stdout
    assert "# edited on the box" in edited.read_text()


def test_three_hosts_one_unreachable_reports_each(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"a": "opstest-a", "b": "opstest-b", "c": "opsdead"})
    cleanup_hosts(inv_path)
    r = run_inv(inv_path, repo, "deploy", "--host", "all", "--json")
    data = json.loads(r.stdout)
    outcomes = {h["host"]: h["outcome"] for h in data["hosts"]}
    assert outcomes == {"a": "ok", "b": "ok", "c": "unreachable"}
    assert r.returncode == 3
    inv = inventory.load(inv_path)
    assert health_commit(inv, "a") == health_commit(inv, "b") == git(repo, "rev-parse", "HEAD")


def test_max_fail_stops_starting_new_batches(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"c": "opsdead", "a": "opstest-a"})
    cleanup_hosts(inv_path)
    r = run_inv(inv_path, repo, "deploy", "--host", "c,a", "--serial", "1", "--max-fail", "1", "--json")
    outcomes = {h["host"]: h["outcome"] for h in json.loads(r.stdout)["hosts"]}
    assert outcomes == {"c": "unreachable", "a": "skipped"}
    assert not (tmp_path / "hosts/a/checkout").exists()


def _snapshot(tmp_path: Path) -> tuple[list[str], list[tuple[str, int]]]:
    # only this test's processes: other tests (or other checkouts) may start and stop demos meanwhile
    procs = subprocess.run(
        ["pgrep", "-af", f"{tmp_path}/.*examples/demo/"], capture_output=True, text=True
    ).stdout
    files = sorted((str(p.relative_to(tmp_path)), p.stat().st_mtime_ns)
                   for p in (tmp_path / "hosts").rglob("*") if p.is_file() and p.name != "hb.json")
    return sorted(procs.splitlines()), files


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    (repo / "Y").write_text("y")
    git(repo, "add", "Y")
    git(repo, "commit", "-qm", "y")
    before = _snapshot(tmp_path)
    r = run_inv(inv_path, repo, "deploy", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _snapshot(tmp_path) == before
    head = git(repo, "rev-parse", "HEAD")
    assert f"-> {head[:10]}" in r.stdout
    assert "stop (in order): demo_worker, demo_daemon, demo_api" in r.stdout
    assert "would signal demo_daemon pid" in r.stdout


def test_rollback_task_returns_to_the_previous_commit(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = write_inventory(tmp_path, sshd, {"box": ""})
    cleanup_hosts(inv_path)
    first = git(repo, "rev-parse", "HEAD")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    (repo / "Z").write_text("z")
    git(repo, "add", "Z")
    git(repo, "commit", "-qm", "z")
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    r = run_inv(inv_path, repo, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    inv = inventory.load(inv_path)
    wait_until(lambda: health_commit(inv, "box") == first, timeout=5)


SLOW = """
[services.slow]
cmd = "python3 late_ready.py --delay 2"
log = "${state_dir}/logs/slow.log"
ready.log = "^ready"
ready.timeout = 10
stop_timeout = 2
"""


def slow_setup(tmp_path: Path, sshd, repo: Path) -> Path:
    shutil.copy(REPO_ROOT / "tests/fixtures/services/late_ready.py", repo / "late_ready.py")
    git(repo, "add", "late_ready.py")
    git(repo, "commit", "-qm", "slow service")
    path = tmp_path / "hosts.toml"
    path.write_text(
        f'[ssh]\nconfig = "{sshd.ssh_config_path}"\n[hosts.box]\nssh = "opstest"\n'
        f'path = "{tmp_path / "hosts/box/checkout"}"\nstate_dir = "{tmp_path / "hosts/box/state"}"\n'
        f'services = ["slow"]\n' + SLOW)
    return path


def start_deploy(inv_path: Path, repo: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, OPS_INVENTORY=str(inv_path), OPS_JOURNAL=str(inv_path.parent / "j.jsonl"))
    return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "deploy"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lock_holder_when_booting(tmp_path: Path) -> int:
    """Wait until the deploy is inside its start step; return the pid of the agent holding the lock."""
    lock = tmp_path / "hosts/box/state/deploy.lock"
    log = tmp_path / "hosts/box/state/logs/slow.log"
    wait_until(lambda: log.exists() and "booting" in log.read_text(), timeout=20)
    return json.loads(lock.read_text())["agent_pid"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def test_ctrl_c_stops_after_the_current_step_and_releases_the_lock(tmp_path, sshd, repo, cleanup_hosts):
    inv_path = slow_setup(tmp_path, sshd, repo)
    cleanup_hosts(inv_path)
    proc = start_deploy(inv_path, repo)
    try:
        agent = lock_holder_when_booting(tmp_path)
        proc.send_signal(2)  # SIGINT, as Ctrl-C in a terminal
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out
    assert not (tmp_path / "hosts/box/state/deploy.lock").exists()
    wait_until(lambda: gone(agent), timeout=10, message="the agent left on the host")
    entries = [json.loads(x) for x in (tmp_path / "hosts/box/state/journal.jsonl").read_text().splitlines()]
    assert entries[-1]["outcome"] == "interrupted"
    assert [s["name"] for s in entries[-1]["steps"]] == ["deliver", "stop", "start"]


def test_a_dropped_connection_finishes_the_step_on_the_host_and_a_rerun_converges(
        tmp_path, sshd, repo, cleanup_hosts):
    inv_path = slow_setup(tmp_path, sshd, repo)
    cleanup_hosts(inv_path)
    proc = start_deploy(inv_path, repo)
    agent = lock_holder_when_booting(tmp_path)
    proc.kill()  # the client vanishes mid-step: its SSH connection drops
    proc.communicate(timeout=10)
    # the host finishes the start it was handed, then the agent releases the lock and exits
    log = tmp_path / "hosts/box/state/logs/slow.log"
    wait_until(lambda: "ready" in log.read_text().split("booting", 1)[1], timeout=15)
    wait_until(lambda: gone(agent), timeout=15, message="the agent left on the host")
    assert not (tmp_path / "hosts/box/state/deploy.lock").exists()
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts["box"]) as s:
        assert [x["state"] for x in control.status(s)] == ["running"]


def test_a_deploy_costs_one_agent_round_trip_per_phase(tmp_path, sshd, repo, cleanup_hosts, monkeypatch):
    from ops.agentclient import AgentSession

    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    cleanup_hosts(inv_path)
    calls: list[str] = []
    real = AgentSession.call

    def counting(self, op, *args, **kwargs):
        calls.append(op)
        return real(self, op, *args, **kwargs)

    monkeypatch.setattr(AgentSession, "call", counting)
    monkeypatch.setenv("OPS_JOURNAL", str(tmp_path / "j.jsonl"))
    inv = inventory.load(inv_path)
    [result] = deploy.deploy(inv, [inv.hosts["box"]], deploy.DeployOptions(repo=str(repo)))
    assert result.outcome == "ok", result.error
    assert calls == ["deploy_lock", "git_deliver", "stop", "start", "verify_all", "deploy_finish"]
