"""Deploy support on the host: the deploy lock, code delivery with git, the deploy record, the journal.

Everything here runs on the host inside the agent, so a deploy step is one round trip.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

from . import hostlock, procs, releases
from .state import WriteFailed, expand, read_json, write_json_atomic

GIT_TIMEOUT = 300
_held_locks = []  # lock files this agent holds; released when the agent exits


def _git(args, cwd, timeout=GIT_TIMEOUT, input_bytes=None):
    env = dict(os.environ)
    # read-only commands (status) must not refresh the index: probes and dry runs change nothing
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_ASKPASS": "true",
                "GIT_OPTIONAL_LOCKS": "0"})
    try:
        p = subprocess.run(
            ["git"] + list(args), cwd=cwd, env=env, input=input_bytes,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return 127, "", "git is not installed on the host"
    except subprocess.TimeoutExpired:
        return 124, "", "git %s timed out after %ss" % (args[0], timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace").strip(), p.stderr.decode(
        "utf-8", "replace").strip()


def _paths(args):
    state_dir = expand(args["host"]["state_dir"])
    return {
        "checkout": expand(args["host"]["path"]),
        "state_dir": state_dir,
        "lock": os.path.join(state_dir, "deploy.lock"),
        "record": os.path.join(state_dir, "deploy.json"),
        "journal": os.path.join(state_dir, "journal.jsonl"),
    }


def checkout_info(checkout):
    info = {"path": checkout, "exists": os.path.isdir(checkout), "git": False, "head": None,
            "dirty": [], "branch": None}
    if not info["exists"]:
        return info
    code, out, _ = _git(["rev-parse", "--is-inside-work-tree", "--show-toplevel"], checkout)
    inside, _, top = out.partition("\n")
    if code != 0 or inside != "true" or os.path.realpath(top) != os.path.realpath(checkout):
        info["empty"] = not os.listdir(checkout)
        return info
    info["git"] = True
    # head, branch and local changes in one call (git >= 2.11); older gits the long way
    code, out, _ = _git(["status", "--porcelain=v2", "--branch", "--untracked-files=no"], checkout)
    if code == 0:
        info["head"], info["branch"], info["dirty"] = parse_status_v2(out)
        return info
    code, out, _ = _git(["rev-parse", "--verify", "-q", "HEAD"], checkout)
    info["head"] = out if code == 0 else None
    code, out, _ = _git(["symbolic-ref", "-q", "--short", "HEAD"], checkout)
    info["branch"] = out if code == 0 else None
    code, out, _ = _git(["status", "--porcelain", "--untracked-files=no"], checkout)
    info["dirty"] = out.splitlines() if code == 0 else ["(git status failed)"]
    return info


def parse_status_v2(out):
    """(head or None, branch or None, changed entries as `git status --porcelain` v1 prints them)
    from `git status --porcelain=v2 --branch` (pure)."""
    head = branch = None
    dirty = []
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            oid = line[len("# branch.oid "):]
            head = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            name = line[len("# branch.head "):]
            branch = None if name == "(detached)" else name
        elif line.startswith(("1 ", "2 ", "u ")):
            kind, rest = line[0], line[2:]
            xy = rest[:2].replace(".", " ")
            fields = {"1": 7, "2": 8, "u": 9}[kind]  # fields before the path
            path = rest.split(" ", fields)[-1]
            if kind == "2":  # renamed or copied: "path<TAB>original"
                new, _, orig = path.partition("\t")
                path = "%s -> %s" % (orig, new)
            dirty.append("%s %s" % (xy, path))
        elif line.startswith("? ") or line.startswith("! "):
            dirty.append("%s %s" % (line[0] * 2, line[2:]))
    return head, branch, dirty


# --- lock ---------------------------------------------------------------------------------------


def _lock_holder(path):
    data = read_json(path)
    if data is None:
        return None
    if data.get("corrupt"):
        return {"corrupt": True, "stale": True}
    ident = {"pid": data.get("agent_pid"), "starttime": data.get("agent_starttime"),
             "boot_id": data.get("boot_id")}
    data["stale"] = not (ident["pid"] and procs.same_process(ident))
    return data


def op_deploy_lock(args, emit):
    """Take the host's deploy lock atomically, content included. Waits up to `wait` seconds."""
    p = _paths(args)
    try:
        os.makedirs(p["state_dir"], exist_ok=True)
    except OSError as exc:
        raise WriteFailed(p["state_dir"], "the state directory", exc) from exc
    me = procs.identity(os.getpid()) or {}
    record = dict(args.get("owner") or {})
    record.update({"agent_pid": os.getpid(), "agent_starttime": me.get("starttime"),
                   "boot_id": me.get("boot_id"), "since": time.time()})
    deadline = time.monotonic() + float(args.get("wait") or 0)
    announced = False
    while True:
        if not _create_lock(p["lock"], record):
            holder = _lock_holder(p["lock"])
            if holder is None:
                continue  # released between our open and our read
            if holder.get("stale") and args.get("break_stale"):
                _remove(p["lock"])
                continue
            if time.monotonic() >= deadline:
                return {"acquired": False, "holder": holder}
            if not announced:
                emit({"event": "progress", "message": "waiting for the deploy lock"})
                announced = True
            time.sleep(0.1)
            continue
        _held_locks.append(p["lock"])
        # and the host's operation lock, held for the whole deploy (no start/stop meanwhile)
        try:
            hostlock.acquire(os.path.realpath(p["state_dir"]), "deploy",
                             wait=max(0.0, deadline - time.monotonic()), emit=emit)
        except hostlock.HostBusy:
            _held_locks.remove(p["lock"])
            _remove(p["lock"])
            raise
        # what the host has, read under the lock (one round trip for both)
        return {"acquired": True, "holder": record, "probe": op_deploy_probe(args, emit)}


def _create_lock(path, record):
    """Create the lock file with its content in one step: written to a temp file, then hard-linked
    into place (link fails if the lock exists), so no one ever reads a half-written lock (which
    would look corrupt, hence stale, hence breakable). Without hard links: O_EXCL, then write."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=os.path.dirname(path))
    except OSError as exc:
        raise WriteFailed(path, "the deploy lock", exc) from exc
    try:
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
        except OSError as exc:
            raise WriteFailed(path, "the deploy lock", exc) from exc
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # a filesystem without hard links
    finally:
        os.unlink(tmp)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def _remove(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def op_deploy_unlock(args, emit):
    """Release our lock; with force, break a stale one (or any, with force='any')."""
    p = _paths(args)
    holder = _lock_holder(p["lock"])
    if holder is None:
        return {"released": False, "detail": "no lock held"}
    ours = holder.get("agent_pid") == os.getpid()
    force = args.get("force")
    if ours or (force and holder.get("stale")) or force == "any":
        _remove(p["lock"])
        if p["lock"] in _held_locks:
            _held_locks.remove(p["lock"])
            hostlock.release(os.path.realpath(p["state_dir"]))
        return {"released": True, "holder": holder}
    return {"released": False, "holder": holder,
            "detail": "held by a live deploy (agent pid %s)" % holder.get("agent_pid")}


def release_held_locks():
    for path in list(_held_locks):
        holder = _lock_holder(path)
        if holder and holder.get("agent_pid") == os.getpid():
            _remove(path)
        _held_locks.remove(path)


# --- probe / deliver ----------------------------------------------------------------------------


def op_deploy_probe(args, emit):
    """What the host runs and has: the checkout, the deploy record (with its history), the lock,
    and which of the asked commits (plus every commit of the history) the checkout holds."""
    p = _paths(args)
    record = read_json(p["record"]) or {}
    if record.get("corrupt"):
        record = {}
    wanted = [c for c in args.get("commits") or [] if c]
    wanted += [e.get("commit") for e in record.get("history") or [] if isinstance(e, dict)]
    wanted += [record.get("current"), record.get("previous")]
    if args["host"].get("layout") == "releases":
        info = releases.checkout_info(args["host"], _git)
        have = releases.present(args["host"], sorted({c for c in wanted if c}), _git)
    else:
        info = checkout_info(p["checkout"])
        have = present_commits(p["checkout"], wanted) if info["git"] else {}
    return {"checkout": info, "record": record, "lock": _lock_holder(p["lock"]), "present": have}


def present_commits(checkout, commits):
    """{commit: the checkout has it}, in one git run."""
    commits = sorted({c for c in commits if isinstance(c, str) and c})
    if not commits:
        return {}
    code, out, _ = _git(["cat-file", "--batch-check"], checkout,
                        input_bytes=("\n".join(c + "^{commit}" for c in commits) + "\n").encode())
    if code != 0:
        return {}
    lines = out.splitlines()
    return {c: i < len(lines) and not lines[i].endswith("missing") for i, c in enumerate(commits)}


def _step(steps, name, ok, detail, t):
    steps.append({"name": name, "ok": ok, "detail": detail, "duration": round(time.monotonic() - t, 3)})
    return ok


def tracked_dirs(checkout):
    """Every directory holding a tracked file (and its parents), relative, "" for the top; None if
    git cannot say."""
    code, out, _ = _git(["ls-files", "-z"], checkout)
    if code != 0:
        return None
    dirs = {""}
    for path in out.split("\0"):
        d = os.path.dirname(path)
        while d not in dirs:
            dirs.add(d)
            d = os.path.dirname(d)
    return dirs


def _purge(checkout):
    """Remove every __pycache__ directory and stray *.pyc in the checkout's tracked directories.
    Untracked directories (.venv, node_modules, data) are never walked: a deploy must not wipe the
    bytecode of a virtualenv or spend minutes in node_modules."""
    tracked = tracked_dirs(checkout)
    dirs = files = 0
    for root, dnames, fnames in os.walk(checkout):
        rel = os.path.relpath(root, checkout)
        rel = "" if rel == "." else rel
        if "__pycache__" in dnames:
            shutil.rmtree(os.path.join(root, "__pycache__"), ignore_errors=True)
            dirs += 1
        dnames[:] = [d for d in dnames if d not in (".git", "__pycache__")
                     and (tracked is None and d not in (".venv", "venv", "node_modules")
                          or tracked is not None and os.path.join(rel, d) in tracked)]
        for fn in fnames:
            if fn.endswith((".pyc", ".pyo")):
                try:
                    os.unlink(os.path.join(root, fn))
                    files += 1
                except OSError:
                    pass
    return dirs, files


def op_git_deliver(args, emit):
    """Bring the checkout to `commit`, by bundle (push) or fetch + fast-forward (pull); purge caches.

    Refuses a dirty checkout and (pull) a non-fast-forward. Returns {ok, from, to, steps}.
    """
    p = _paths(args)
    checkout = p["checkout"]
    commit = args["commit"]
    mode = args["mode"]
    steps = []
    if args["host"].get("layout") == "releases":
        def step(name, ok, detail, t):
            return _step(steps, name, ok, detail, t)

        ok, reused = releases.deliver(args, _git, step)
        return {"ok": ok, "reused": reused, "from": releases.current_commit(args["host"]), "to": commit,
                "steps": steps}
    info = checkout_info(checkout)
    before = info["head"]
    t = time.monotonic()
    if not info["git"]:
        if mode == "pull" or args.get("no_create"):
            _step(steps, "checkout", False, "%s is not a git checkout; clone it on the host first"
                  % checkout, t)
            return {"ok": False, "from": before, "to": commit, "steps": steps}
        if info["exists"] and not info.get("empty"):
            _step(steps, "checkout", False, "%s exists, is not empty and is not a git checkout; "
                  "move it away or point `path` elsewhere" % checkout, t)
            return {"ok": False, "from": before, "to": commit, "steps": steps}
        os.makedirs(checkout, exist_ok=True)
        code, _, err = _git(["init", "-q"], checkout)
        if not _step(steps, "init", code == 0, err or "created %s" % checkout, t):
            return {"ok": False, "from": before, "to": commit, "steps": steps}
        t = time.monotonic()
    if info["dirty"]:
        _step(steps, "clean", False, "the checkout on the host has local changes: %s; commit or "
              "discard them there" % ", ".join(info["dirty"][:5]), t)
        return {"ok": False, "from": before, "to": commit, "steps": steps}

    have = _git(["cat-file", "-e", commit + "^{commit}"], checkout)[0] == 0
    if not have:
        t = time.monotonic()
        if mode == "push":
            bundle = args.get("_stream")
            if not bundle:
                _step(steps, "fetch", False, "commit %s is not on the host and no bundle was sent"
                      % commit[:12], t)
                return {"ok": False, "from": before, "to": commit, "steps": steps}
            code, _, err = _git(["fetch", "-q", "--no-tags", bundle,
                                 "+refs/ops/deploy:refs/ops/deployed"], checkout)
            ok = code == 0
            _step(steps, "fetch", ok, err or "fetched from bundle", t)
        else:
            remote = args.get("remote") or "origin"
            code, _, err = _git(["fetch", "-q", remote], checkout)
            ok = _step(steps, "fetch", code == 0, err or "fetched %s" % remote, t)
        if not ok:
            return {"ok": False, "from": before, "to": commit, "steps": steps}
        if _git(["cat-file", "-e", commit + "^{commit}"], checkout)[0] != 0:
            _step(steps, "fetch", False, "commit %s is not on the host after fetching; was it pushed?"
                  % commit[:12], t)
            return {"ok": False, "from": before, "to": commit, "steps": steps}
    t = time.monotonic()
    rollback = args.get("rollback")
    if (mode == "pull" and before and not rollback
            and _git(["merge-base", "--is-ancestor", before, commit], checkout)[0] != 0):
        _step(steps, "fast-forward", False, "the host is at %s, which is not an ancestor of %s: "
              "not a fast-forward; refusing" % (before[:12], commit[:12]), t)
        return {"ok": False, "from": before, "to": commit, "steps": steps}
    if rollback and info["branch"]:  # move the branch back, so the next deploy fast-forwards again
        code, _, err = _git(["checkout", "-q", "-B", info["branch"], commit], checkout)
    elif mode == "pull" and info["branch"]:
        code, _, err = _git(["merge", "-q", "--ff-only", commit], checkout)
    else:
        code, _, err = _git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach",
                             commit], checkout)
    problem = None if code == 0 else "git checkout exited %d: %s" % (code, err or "no message")
    if problem is None and os.path.exists(os.path.join(checkout, ".git", "index.lock")):
        problem = "git checkout exited 0 but left .git/index.lock behind (a write failed? disk full?)"
    if problem is None:
        # git can exit 0 after a write error (disk full): a truncated file. Prove the tree.
        problem = tree_problem(checkout, commit)
    if problem is not None:
        _step(steps, "checkout", False, problem, t)
        if before:
            t = time.monotonic()
            restored = restore_tree(checkout, before, info["branch"], since=t)
            _step(steps, "restore", restored is None, restored or "the tree is back at %s, clean"
                  % before[:12], t)
        return {"ok": False, "from": before, "to": commit, "steps": steps}
    _step(steps, "checkout", True, "now at %s (verified clean)" % commit[:12], t)
    t = time.monotonic()
    dirs, files = _purge(checkout)
    _step(steps, "purge", True, "removed %d __pycache__ dirs, %d .pyc files" % (dirs, files), t)
    return {"ok": True, "from": before, "to": commit, "steps": steps}


def tree_problem(checkout, commit):
    """None if the checkout is exactly `commit` with no changed tracked file; else what is wrong."""
    code, head, err = _git(["rev-parse", "--verify", "-q", "HEAD"], checkout)
    if code != 0 or head != commit:
        return "after checkout HEAD is %s, not %s" % (head[:12] or "unknown", commit[:12])
    # stat info may be stale after a failed write: refresh, then compare contents
    _git(["update-index", "-q", "--really-refresh"], checkout)
    code, out, err = _git(["status", "--porcelain", "--untracked-files=no"], checkout)
    if code != 0:
        how = "killed by signal %d" % -code if code < 0 else "exit %d" % code
        return ("the delivered tree cannot be verified (a write failed? disk full?): git status "
                "failed after checkout (%s): %s" % (how, err or "no message"))
    if out:
        changed = [ln[3:] for ln in out.splitlines()]
        return ("the delivered tree does not match %s (a write failed? disk full?): %s"
                % (commit[:12], ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")))
    return None


def restore_tree(checkout, commit, branch, since=None):
    """Force the checkout back to `commit` (and its branch, if it was on one); None when it is
    verified clean there, else what is still wrong. An index.lock left by our own failed checkout
    (created since `since`, under the deploy lock) is removed first: no other git run made it."""
    lock = os.path.join(checkout, ".git", "index.lock")
    try:
        if since is not None and os.stat(lock).st_mtime >= time.time() - (time.monotonic() - since) - 1:
            os.unlink(lock)
    except OSError:
        pass
    if branch:
        code, _, err = _git(["checkout", "-q", "-f", "-B", branch, commit], checkout)
    else:
        code, _, err = _git(["-c", "advice.detachedHead=false", "checkout", "-q", "-f", "--detach",
                             commit], checkout)
    if code != 0:
        return "restoring %s failed: %s" % (commit[:12], err)
    return tree_problem(checkout, commit)


HISTORY_KEEP = 50  # deploys kept in the record (their commits pinned by refs/ops/history/*)


def op_deploy_record(args, emit):
    """Record a successful deploy: current <- commit, previous <- what was current."""
    p = _paths(args)
    record = read_json(p["record"]) or {}
    if record.get("corrupt"):
        record = {}
    history = [e for e in record.get("history") or [] if isinstance(e, dict)]
    if not history and record.get("current"):  # a record from before the history
        history = [{"commit": c, "via": "deploy", "run_id": None, "at": None}
                   for c in (record.get("previous"), record["current"]) if c]
    bad = set(record.get("rolled_back") or [])
    bad.update(c for c in args.get("rolled_back") or [] if c)
    commit = args.get("commit")
    if commit:
        if args.get("via", "deploy") == "deploy":
            bad.discard(commit)  # deployed again on purpose: good again
        if record.get("current") != commit:
            record["previous"] = record.get("current")
            record["current"] = commit
        record["deployed_at"] = time.time()
        record["run_id"] = args.get("run_id")
        history.append({"commit": commit, "via": args.get("via", "deploy"),
                        "run_id": args.get("run_id"), "at": time.time()})
    for e in history:
        e["rolled_back"] = e["commit"] in bad
    dropped, history = history[:-HISTORY_KEEP], history[-HISTORY_KEEP:]
    record["history"] = history
    record["rolled_back"] = sorted(bad & {e["commit"] for e in history} | set(args.get("rolled_back") or []))
    write_json_atomic(p["record"], record, "the deploy record (which commit runs)")
    if commit:
        releases_layout = args["host"].get("layout") == "releases"
        _pin(releases.paths(args["host"])["repo"] if releases_layout else p["checkout"], history, dropped)
    return record


def _pin(checkout, history, dropped):
    """A ref per deploy (refs/ops/history/<run>) so git never prunes a commit we may roll back to;
    the refs of deploys that left the history are removed."""
    for e in dropped:
        if e.get("run_id"):
            _git(["update-ref", "-d", "refs/ops/history/" + e["run_id"]], checkout)
    e = history[-1]
    if e.get("run_id"):
        _git(["update-ref", "refs/ops/history/" + e["run_id"], e["commit"]], checkout)


def op_journal_append(args, emit):
    p = _paths(args)
    os.makedirs(p["state_dir"], exist_ok=True)
    line = json.dumps(args["entry"], sort_keys=True, separators=(",", ":"))
    try:
        _rotate(p["journal"], int(args.get("journal_max") or JOURNAL_MAX))
        with open(p["journal"], "a") as f:
            f.write(line + "\n")
    except OSError as exc:
        raise WriteFailed(p["journal"], "the deploy journal entry", exc) from exc
    return {"path": p["journal"]}


JOURNAL_MAX = 1 << 20  # bytes: a bigger journal is moved to journal.jsonl.1 (one old file kept)


def _rotate(path, limit):
    try:
        if os.path.getsize(path) >= limit:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass


def _last_lines(path, n):
    """The last n lines of a file, read from its end (a journal can be large)."""
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 65536, b""
            while size > 0 and data.count(b"\n") <= n:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    return [ln.decode("utf-8", "replace") for ln in data.splitlines()[-n:]]


def op_journal_read(args, emit):
    p = _paths(args)
    n = int(args.get("last") or 20)
    lines = _last_lines(p["journal"], n)
    if len(lines) < n:  # the rest from the rotated file
        lines = _last_lines(p["journal"] + ".1", n - len(lines)) + lines
    entries = []
    for ln in lines:
        try:
            entries.append(json.loads(ln))
        except ValueError:
            continue
    return {"path": p["journal"], "entries": entries}


def op_deploy_finish(args, emit):
    """The end of a deploy in one round trip: record the commit (if it succeeded), append the
    journal entry, release the lock."""
    out = {}
    try:
        if args.get("commit") or args.get("rolled_back"):
            out["record"] = op_deploy_record(args, emit)
        if args.get("commit") and args["host"].get("layout") == "releases":
            keep = int(args["host"].get("keep") or 5)
            protect = {args["commit"], (out["record"] or {}).get("previous")}
            out["pruned"] = releases.prune(args["host"], keep, protect)
        out["journal"] = op_journal_append(args, emit)
    finally:
        out["unlock"] = op_deploy_unlock(args, emit)
    return out


def op_release_switch(args, emit):
    """layout = "releases": point `current` at the release of `commit` (atomic)."""
    ok, detail = releases.switch(args["host"], args["commit"])
    return {"ok": ok, "detail": detail}


OPS = {
    "release_switch": op_release_switch,
    "deploy_finish": op_deploy_finish,
    "deploy_lock": op_deploy_lock,
    "deploy_unlock": op_deploy_unlock,
    "deploy_probe": op_deploy_probe,
    "git_deliver": op_git_deliver,
    "deploy_record": op_deploy_record,
    "journal_append": op_journal_append,
    "journal_read": op_journal_read,
}
