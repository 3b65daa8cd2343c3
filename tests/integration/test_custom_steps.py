"""The custom runbook steps of examples/custom/tasks.py, run with the real `inv` on the `local` host
and on the real sshd host: typed confirmation (a real pseudo-terminal), --yes, refusal without a
terminal, journaled steps shown by `inv journal`, and the "one unit of work, then its output file
appeared" check failing on a service that writes no call log."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

from tests.harness import git
from tests.integration.rig import PY, REPO, Rig, local_rig_fixture, rig_fixture  # noqa: F401

CUSTOM = REPO / "examples" / "custom"


def inv(rig: Rig, *args: str, cwd: Path = CUSTOM, stdin: int | None = subprocess.DEVNULL,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`python -m invoke ARGS` in `cwd` (the custom tasks) on the rig's inventory; the local journal
    in the test's dir."""
    return subprocess.run([PY, "-m", "invoke", *args], cwd=cwd, env=env_for(rig), capture_output=True,
                          text=True, timeout=timeout, stdin=stdin)


def env_for(rig: Rig) -> dict[str, str]:
    return dict(os.environ, OPS_INVENTORY=str(rig.inv_path), OPS_JOURNAL=str(rig.root / "journal.jsonl"),
                PYTHONPATH=str(REPO))


def inv_on_terminal(rig: Rig, answer: str, *args: str, cwd: Path = CUSTOM,
                    timeout: float = 90) -> tuple[int, str]:
    """Run `inv ARGS` with a pseudo-terminal as stdin/stderr; type `answer` at the prompt."""
    master, slave = pty.openpty()
    p = subprocess.Popen([PY, "-m", "invoke", *args], cwd=cwd, env=env_for(rig), stdin=slave,
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while b"to confirm:" not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no prompt within {timeout}s: {seen!r}"
            r, _, _ = select.select([master], [], [], min(left, 1.0))
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        os.write(master, answer.encode() + b"\n")
        out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        while True:  # the rest of the terminal's output
            r, _, _ = select.select([master], [], [], 0.2)
            if not r:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        os.close(master)
    return p.returncode, out + seen.decode("utf-8", "replace")


def make_trees(rig: Rig) -> None:
    """The checkout as a git repository with work trees trees/gh-1, trees/gh-2, trees/keep, and a
    stale worktree entry whose directory is already gone."""
    co = rig.checkout
    git(co, "init", "-q", "-b", "main")
    git(co, "add", "-A")
    git(co, "commit", "-q", "-m", "base")
    for name in ("gh-1", "gh-2", "keep", "gh-stale"):
        git(co, "worktree", "add", "-q", "--detach", f"trees/{name}")
    subprocess.run(["rm", "-rf", str(co / "trees" / "gh-stale")], check=True)
    (rig.root / "outside").mkdir()
    os.symlink(rig.root / "outside", co / "trees" / "gh-link")  # a link is never followed nor listed


def worktrees(rig: Rig) -> list[str]:
    out = git(rig.checkout, "worktree", "list", "--porcelain")
    return sorted(Path(ln.split(" ", 1)[1]).name for ln in out.splitlines() if ln.startswith("worktree "))


def test_prune_trees_removes_only_the_confirmed_gh_trees_and_prunes_git(rig: Rig) -> None:
    make_trees(rig)
    rig.write({})
    trees = rig.checkout / "trees"

    r = inv(rig, "prune-trees", "--host", "box", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "2 tree(s): trees/gh-1 trees/gh-2; 1 stale worktree entry" in r.stdout
    assert sorted(p.name for p in trees.iterdir()) == ["gh-1", "gh-2", "gh-link", "keep"]

    # no terminal, no --yes: refused before anything is removed
    r = inv(rig, "prune-trees", "--host", "box")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "needs a typed confirmation, and there is no terminal" in r.stderr and "--yes" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in trees.iterdir()) == ["gh-1", "gh-2", "gh-link", "keep"]

    r = inv(rig, "prune-trees", "--host", "box", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed 2 tree(s): trees/gh-1 trees/gh-2; worktrees pruned" in r.stdout
    assert sorted(p.name for p in trees.iterdir()) == ["gh-link", "keep"]
    assert (rig.root / "outside").is_dir()
    assert worktrees(rig) == ["checkout", "keep"]

    # the host's journal has both steps, the confirmation carried into the removal
    j = inv(rig, "-r", str(REPO), "journal", "--host", "box", "--json")
    assert j.returncode == 0, j.stderr
    steps = [e for e in json.loads(j.stdout)["entries"] if e.get("kind") == "step"]
    assert [(e["step"], e["outcome"]) for e in steps][-2:] == [("list-trees", "ok"), ("prune-trees", "ok")]
    last = steps[-1]
    assert last["confirmed"]["how"] == "--yes" and last["confirmed"]["hosts"] == ["box"]
    assert last["task"] == "prune-trees" and last["user"] and last["run_id"] == steps[-2]["run_id"]
    plain = inv(rig, "-r", str(REPO), "journal", "--host", "box")
    assert "step prune-trees (prune-trees)" in plain.stdout
    local = [json.loads(x) for x in (rig.root / "journal.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in local].count("confirm") == 2  # refused (no terminal), then --yes
    assert [e["outcome"] for e in local if e["kind"] == "confirm"] == ["refused", "confirmed"]


def test_prune_trees_asks_on_a_terminal_and_a_wrong_answer_removes_nothing(rig: Rig) -> None:
    make_trees(rig)
    rig.write({})
    trees = rig.checkout / "trees"
    code, text = inv_on_terminal(rig, "yes", "prune-trees", "--host", "box")
    assert code == 1, text
    assert "Type 'box' to confirm" in text and "typed 'yes', not 'box': nothing done" in text
    assert sorted(p.name for p in trees.iterdir()) == ["gh-1", "gh-2", "gh-link", "keep"]

    code, text = inv_on_terminal(rig, "box", "prune-trees", "--host", "box")
    assert code == 0, text
    assert sorted(p.name for p in trees.iterdir()) == ["gh-link", "keep"]
    local = [json.loads(x) for x in (rig.root / "journal.jsonl").read_text().splitlines()]
    confirms = [(e["outcome"], e["how"], e["hosts"]) for e in local if e["kind"] == "confirm"]
    assert confirms == [("refused", "typed", ["box"]), ("confirmed", "typed", ["box"])]
    removal = [e for e in local if e.get("step") == "prune-trees"][-1]
    assert removal["confirmed"]["how"] == "typed"


def test_api_call_does_one_lookup_and_sees_its_call_log_appear(rig: Rig) -> None:
    rig.write(rig.demo(python=PY, daemon_flags="--api-calls-dir ${path}/logs/api"))
    try:
        assert rig.start().ok
        r = inv(rig, "api-call", "--host", "box", "--name", "bob", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = json.loads(r.stdout)
        host = doc["steps"][0]["hosts"]["box"]
        assert host["ok"] and "lookup of 'bob' answered 200 and " in host["detail"]
        assert rig.token not in r.stdout + r.stderr
        [calls] = list((rig.checkout / "logs" / "api").glob("api-calls-*.jsonl"))
        assert json.loads(calls.read_text().splitlines()[-1])["name"] == "bob"
    finally:
        rig.stop()


def test_api_call_fails_when_the_service_writes_no_call_log(rig: Rig) -> None:
    rig.write(rig.demo(python=PY))  # the healthy twin above logs its calls; this one does not
    try:
        assert rig.start().ok
        r = inv(rig, "api-call", "--host", "box")
        assert r.returncode == 1, r.stdout + r.stderr
        assert ("the lookup answered 200 but no logs/api/api-calls-*.jsonl recorded it since (no file)"
                in r.stdout)
    finally:
        rig.stop()


def readme_example() -> str:
    """The complete tasks.py of the README's "Your own steps" section (its first python block)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own steps", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_copied_into_a_fresh_directory_works_with_inv(rig: Rig, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "tasks.py").write_text(readme_example())
    (rig.checkout / "scripts").mkdir()
    (rig.checkout / "scripts" / "supervisor.py").write_text("print('ok')\n")
    make_trees(rig)
    rig.write({})

    listed = inv(rig, "--list", cwd=fresh)
    assert "py-compile" in listed.stdout and "clean-trees" in listed.stdout and "deploy" in listed.stdout

    r = inv(rig, "py-compile", "--host", "box", cwd=fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "py-compile" in r.stdout and "box" in r.stdout and " ok " in r.stdout
    # its failing twin: a syntax error fails the step, exit 1, with py_compile's message
    (rig.checkout / "scripts" / "supervisor.py").write_text("def broken(:\n")
    r = inv(rig, "py-compile", "--host", "box", cwd=fresh)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed" in r.stdout and "SyntaxError" in r.stdout

    r = inv(rig, "clean-trees", "--host", "box", cwd=fresh)  # no terminal: refused
    assert r.returncode == 2 and "--yes" in r.stderr
    assert (rig.checkout / "trees" / "gh-1").is_dir()
    r = inv(rig, "clean-trees", "--host", "box", "--yes", "--json", cwd=fresh)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["steps"][0]["hosts"]["box"]["detail"] == "cleaned; 0 service(s) running"
    assert sorted(p.name for p in (rig.checkout / "trees").iterdir()) == ["keep"]  # the link went too
    assert (rig.root / "outside").is_dir()
    assert (rig.checkout / "logs" / "cleaned.txt").read_text() == "cleaned; running: []\n"

    j = inv(rig, "journal", "--host", "box", "--json", cwd=fresh)
    steps = [(e["step"], e["outcome"]) for e in json.loads(j.stdout)["entries"] if e.get("kind") == "step"]
    assert steps == [("py-compile", "ok"), ("py-compile", "failed"), ("clean-trees", "ok")]
