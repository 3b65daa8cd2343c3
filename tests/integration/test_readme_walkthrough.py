"""The README's "First deploy to a real box", run as written against the test sshd: the ssh alias,
the host added to hosts.toml and committed, then each `$ inv ...` command of the walkthrough, whose
exit code must be 0 and whose output must be the one the README shows (pids, times, ports, commit
ids and paths aside; `waiting on ...` lines depend on the machine's speed and are not shown)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import free_port, kill_until_none_left, processes_with

REPO = Path(__file__).resolve().parents[2]
SECTION = "## First deploy to a real box"
# how the README's example box is spelled, and what stands for it in the test
BOX_PATH, BOX_STATE, BOX_HOME, CLONE = (
    "~/apps/demo",
    "~/.local/state/ops/mybox",
    "/home/deploy",
    "/home/you/ops",
)


def walkthrough() -> tuple[str, list[tuple[str, list[str]]]]:
    """(the hosts.toml block, [(command, expected output lines)]) from the README."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    console = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    steps: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return "\n".join(x[3:] if x.startswith("   ") else x for x in toml.splitlines()), steps


def normalize(text: str, paths: dict[str, str]) -> list[str]:
    for real, token in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(real, token)
    out: list[str] = []
    run: list[str] = []  # consecutive progress lines (`host: service: ...`): their order is timing's
    for line in [*text.splitlines(), ""]:
        if "waiting on gate" in line:
            continue
        line = re.sub(r"\b[0-9a-f]{7,40}\b", "C", line)
        line = re.sub(r"\d+(\.\d+)?", "N", line)
        line = re.sub(r"\s+", " ", line).strip()
        if re.match(r"^[\w.-]+: [\w.-]+: ", line):
            run.append(line)
            continue
        out.extend(sorted(run))
        run = []
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return out


@pytest.fixture
def box(tmp_path: Path, sshd):
    """A clone of this repository (this worktree's code) with the README's mybox added and
    committed, an ssh_config with the alias `mybox` for the test sshd, and a place for the box."""
    clone = tmp_path / "ops"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    for part in ("ops", "tasks.py", "hosts.toml", "examples"):
        target = clone / part
        if target.is_dir():
            shutil.rmtree(target)
        src = REPO / part
        (
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy2(src, target)
        )
    block, _ = walkthrough()
    checkout, state = tmp_path / "box" / "apps" / "demo", tmp_path / "box" / "state"
    block = block.replace(f'"{BOX_PATH}"', f'"{checkout}"').replace(f'"{BOX_STATE}"', f'"{state}"')
    hosts = (clone / "hosts.toml").read_text()
    port = free_port()
    hosts = hosts.replace("port = 18770", f"port = {port}")
    (clone / "hosts.toml").write_text(hosts + "\n" + block)
    git = ["git", "-C", str(clone), "-c", "user.name=you", "-c", "user.email=you@example.com"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "hosts: mybox"], check=True)
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host mybox\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {sshd.user}\n"
        f"    IdentityFile {sshd.key_path}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
    )
    paths = {
        str(checkout): BOX_PATH,
        str(state): BOX_STATE,
        str(clone): CLONE,
        # what the README's box shows for ~ expanded on it
        f"{BOX_HOME}/apps/demo": BOX_PATH,
        f"{BOX_HOME}/.local/state/ops/mybox": BOX_STATE,
    }
    yield clone, ssh_config, paths
    subprocess.run(
        [sys.executable, "-m", "invoke", "stop", "--host", "mybox"],
        cwd=clone,
        env={**os.environ, "OPS_SSH_CONFIG": str(ssh_config)},
        capture_output=True,
        timeout=120,
    )
    kill_until_none_left(lambda: processes_with(str(tmp_path / "box")), 10.0)


def test_the_readme_walkthrough_runs_as_written_with_the_output_it_shows(box):
    clone, ssh_config, paths = box
    _, steps = walkthrough()
    assert [c for c, _ in steps][:5] == [
        "inv hosts",
        "inv deploy --host mybox --dry-run",
        "inv deploy --host mybox",
        "inv status --host mybox",
        "inv verify.all --host mybox",
    ]
    env = {**os.environ, "OPS_SSH_CONFIG": str(ssh_config)}
    env.pop("OPS_INVENTORY", None)
    report = []
    for command, shown in steps:
        argv = command.split()
        assert argv[0] == "inv"
        r = subprocess.run(
            [sys.executable, "-m", "invoke", *argv[1:]],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, f"$ {command}\n{r.stdout}{r.stderr}"
        got, want = normalize(r.stdout, paths), normalize("\n".join(shown), paths)
        report.append((command, r.stdout, got == want))
    bad = [(c, out) for c, out, ok in report if not ok]
    assert not bad, "the README shows other output for:\n" + "\n".join(f"$ {c}\n{out}" for c, out in bad)


def test_a_first_deploy_on_a_terminal_shows_each_service_while_it_starts(box):
    from tests.integration.test_progress import run_in_pty

    clone, ssh_config, _ = box

    code, text, _ = run_in_pty(None, "deploy", "--host", "mybox", cwd=clone, inv_path=clone / "hosts.toml",
                               env={"OPS_SSH_CONFIG": str(ssh_config)}, timeout=180)
    assert code == 0, text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"demo_daemon\s*│[^│]*(spawned pid|gate \S+ passed|started pid)", plain), plain[-3000:]
    assert "deliver ok" in plain and "deploy summary" in plain
    ticks = {float(x) for x in re.findall(r"deploy \((\d+\.\d)s\)", plain)}
    assert len(ticks) >= 2, sorted(ticks)
