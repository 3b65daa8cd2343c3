"""Large payloads and long-lived hosts, over the real sshd: the bundle travels in bounded chunks
(neither end holds it whole), the purge leaves untracked directories (.venv, node_modules) alone,
and the host journal is rotated."""

from __future__ import annotations

import json
import os

from ops import deploy, inventory
from ops.agentclient import STREAM_CHUNK
from ops.session import connect
from tests.harness import git
from tests.integration.deploykit import make_repo, run_inv, write_inventory

BLOB = 48 << 20


def test_a_large_bundle_is_streamed_in_bounded_chunks(tmp_path, sshd, used, monkeypatch):
    from ops.transport import SSHChannel

    repo = make_repo(tmp_path)
    (repo / "blob.bin").write_bytes(os.urandom(BLOB))  # does not compress: the bundle is as large
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-qm", "a large file")
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    sent: list[int] = []
    real_send = SSHChannel.send

    def counting(self, data: bytes) -> None:
        sent.append(len(data))
        return real_send(self, data)

    monkeypatch.setattr(SSHChannel, "send", counting)
    monkeypatch.setenv("OPS_JOURNAL", str(tmp_path / "j.jsonl"))
    inv = inventory.load(inv_path)
    peak: list[int] = []
    real_run = deploy.HostDeployer.run

    def run_then_measure(self, *args, **kwargs):
        result = real_run(self, *args, **kwargs)
        pid = self.s.agent.hello["pid"]
        status = self.s.call("exec", {"cmd": ["cat", f"/proc/{pid}/status"]})["stdout"]
        peak.append(int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))))
        return result

    monkeypatch.setattr(deploy.HostDeployer, "run", run_then_measure)
    [result] = deploy.deploy(inv, [inv.hosts["box"]], deploy.DeployOptions(repo=str(repo)))
    assert result.outcome == "ok", result.error
    assert sum(sent) > BLOB  # the bundle went through the agent channel...
    assert max(sent) <= STREAM_CHUNK  # ...in bounded chunks (no line holds it)
    # the agent's peak memory stays below the bundle's size (it idles at ~24 MB whatever the
    # bundle; base64 in one JSON line held the bundle several times over)
    assert peak and peak[0] * 1024 < BLOB, f"agent peak RSS {peak[0]} kB"
    assert git(tmp_path / "hosts/box/checkout", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")


def test_the_purge_skips_untracked_directories(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    assert run_inv(inv_path, repo, "deploy").returncode == 0
    co = tmp_path / "hosts/box/checkout"
    kept = [co / ".venv/lib/python3/site-packages/x/__pycache__/x.cpython-311.pyc",
            co / "node_modules/m/__pycache__/m.pyc", co / "data/cache/y.pyc"]
    gone = [co / "examples/demo/__pycache__/api.cpython-311.pyc", co / "examples/stray.pyc"]
    for f in kept + gone:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"bytecode")
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(f.exists() for f in kept), [str(f) for f in kept if not f.exists()]
    assert not any(f.exists() for f in gone), [str(f) for f in gone if f.exists()]


def test_the_host_journal_is_rotated_and_read_across_the_rotation(tmp_path, sshd, used):
    repo = make_repo(tmp_path)
    inv_path = write_inventory(tmp_path, sshd, {"box": "opstest"})
    used.append(inv_path)
    state = tmp_path / "hosts/box/state"
    state.mkdir(parents=True)
    old = {"run_id": "old", "outcome": "ok", "steps": [], "pad": "x" * 2000}
    (state / "journal.jsonl").write_text((json.dumps(old) + "\n") * 600)  # > 1 MB
    r = run_inv(inv_path, repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (state / "journal.jsonl.1").stat().st_size > 1 << 20
    assert len((state / "journal.jsonl").read_text().splitlines()) == 1
    inv = inventory.load(inv_path)
    with connect(inv, inv.hosts["box"]) as s:
        entries = deploy.journal(s, 3)
    assert [e["run_id"] for e in entries][:2] == ["old", "old"] and entries[-1]["outcome"] == "ok"
