"""The release layout on the host (layout = "releases", as Capistrano and Kamal users know it).

    <root>/.repo/              a git repository: the object store bundles and fetches land in
    <root>/releases/<commit>/  one exported tree per deployed commit (no .git: self-contained)
    <root>/shared/<path>       what every release links in (a venv, data, logs)
    <root>/current -> releases/<commit>   switched atomically (rename of a new link over it)

A release is exported to a temporary directory and renamed into place only when complete, so a
failed export (a full disk) leaves nothing behind that could be switched to. Its marker file
records the commit and whether its build passed; a release that was never built is exported
again. A rollback is a switch back to a release that is still there: instant, offline, and it
works even if the commit is gone from the repository.
"""

import json
import os
import shutil
import subprocess
import tarfile
import time

from .state import WriteFailed, expand

MARKER = ".ops-release"


def paths(host):
    root = expand(host["root"])
    return {"root": root, "repo": os.path.join(root, ".repo"), "releases": os.path.join(root, "releases"),
            "current": os.path.join(root, "current"), "shared": os.path.join(root, "shared")}


def release_dir(host, commit):
    return os.path.join(paths(host)["releases"], commit)


def marker(rel):
    try:
        with open(os.path.join(rel, MARKER)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_marker(rel, data):
    with open(os.path.join(rel, MARKER), "w") as f:
        json.dump(data, f)


def current_commit(host):
    """The commit `current` points at (None if there is no current release)."""
    try:
        target = os.readlink(paths(host)["current"])
    except OSError:
        return None
    info = marker(os.path.join(paths(host)["root"], target))
    return info.get("commit") if info else None


def checkout_info(host, git):
    """The probe's view of a releases root (same keys as an in-place checkout's)."""
    p = paths(host)
    head = current_commit(host)
    in_repo = bool(head) and os.path.isdir(p["repo"]) and git(["cat-file", "-e", head + "^{commit}"],
                                                             p["repo"])[0] == 0
    return {"path": p["root"], "exists": os.path.isdir(p["root"]), "git": os.path.isdir(p["repo"]),
            "head": head, "dirty": [], "branch": None, "layout": "releases",
            "basis": head if in_repo else None,  # what a thin bundle may build on
            "releases": sorted(d for d in _list(p["releases"]) if not d.startswith("."))}


def _list(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def present(host, commits, git):
    """{commit: deployable without a bundle}: a built release is there, or the repository has it."""
    p = paths(host)
    out = {}
    for c in commits:
        if not c:
            continue
        info = marker(release_dir(host, c))
        out[c] = bool(info and info.get("built")) or (
            os.path.isdir(p["repo"]) and git(["cat-file", "-e", c + "^{commit}"], p["repo"])[0] == 0)
    return out


def link_shared(host, rel):
    """Replace each `shared` path of the release by a link to <root>/shared/<path> (created as a
    directory the first time)."""
    for item in host.get("shared") or []:
        target = os.path.join(paths(host)["shared"], item)
        if not os.path.lexists(target):
            os.makedirs(target)
        dst = os.path.join(rel, item)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.unlink(dst)
        elif os.path.isdir(dst):
            shutil.rmtree(dst)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(target, dst)


def _export(repo, commit, dest):
    """git archive | tar -x into dest, streamed (never the whole tree in memory)."""
    p = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=repo, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # python < 3.8.17 / 3.11.4: git archive of our own commit holds no hostile paths
                tar.extractall(dest)
    finally:
        p.stdout.close()
        err = p.stderr.read().decode("utf-8", "replace").strip()
        code = p.wait()
    if code != 0:
        raise RuntimeError("git archive exited %d: %s" % (code, err))


def deliver(args, git, step):
    """Make releases/<commit> ready (export, REVISION file, shared links), without touching
    `current`. Reuses a release that is there and built. Returns (ok, reused)."""
    host, commit = args["host"], args["commit"]
    p = paths(host)
    rel = release_dir(host, commit)
    t = time.monotonic()
    info = marker(rel)
    needs_build = bool(args.get("needs_build"))
    if info and info.get("commit") == commit and (info.get("built") or not needs_build):
        link_shared(host, rel)
        step("release", True, "reusing releases/%s" % commit[:12], t)
        return True, True
    if os.path.lexists(rel):
        if os.path.realpath(rel) == os.path.realpath(p["current"]):
            step("release", False, "releases/%s is current but incomplete; deploy another commit "
                 "first or remove it by hand" % commit[:12], t)
            return False, False
        shutil.rmtree(rel)  # an export that was never built: start again
    os.makedirs(p["releases"], exist_ok=True)
    if not os.path.isdir(os.path.join(p["repo"], ".git")):
        if args["mode"] == "pull":
            step("repo", False, "%s is not a git repository; clone it on the host first "
                 "(git clone URL %s)" % (p["repo"], p["repo"]), t)
            return False, False
        code, _, err = git(["init", "-q", p["repo"]], p["root"])
        if not step("repo", code == 0, err or "created %s" % p["repo"], t):
            return False, False
    if git(["cat-file", "-e", commit + "^{commit}"], p["repo"])[0] != 0:
        t = time.monotonic()
        if args["mode"] == "push":
            if not args.get("_stream"):
                step("fetch", False, "commit %s is not on the host and no bundle was sent" % commit[:12], t)
                return False, False
            code, _, err = git(["fetch", "-q", "--no-tags", args["_stream"],
                                "+refs/ops/deploy:refs/ops/deployed"], p["repo"])
        else:
            code, _, err = git(["fetch", "-q", args.get("remote") or "origin"], p["repo"])
        if not step("fetch", code == 0, err or "fetched", t):
            return False, False
        if git(["cat-file", "-e", commit + "^{commit}"], p["repo"])[0] != 0:
            step("fetch", False, "commit %s is not on the host after fetching; was it pushed?"
                 % commit[:12], t)
            return False, False
    git(["update-ref", "refs/ops/releases/" + commit, commit], p["repo"])  # kept from gc
    t = time.monotonic()
    tmp = os.path.join(p["releases"], ".tmp-%s-%d" % (commit[:12], os.getpid()))
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _export(p["repo"], commit, tmp)
        with open(os.path.join(tmp, "REVISION"), "w") as f:
            f.write(commit + "\n")
        link_shared(host, tmp)
        _write_marker(tmp, {"commit": commit, "built": not needs_build, "at": time.time()})
        os.rename(tmp, rel)
    except (OSError, RuntimeError, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or tmp
        step("export", False, "releases/%s was not written (%s: %s); nothing was switched"
             % (commit[:12], where, why), t)
        return False, False
    step("export", True, "releases/%s ready" % commit[:12], t)
    return True, False


def mark_built(rel):
    info = marker(rel) or {}
    info["built"] = True
    try:
        _write_marker(rel, info)
    except OSError as exc:
        raise WriteFailed(os.path.join(rel, MARKER), "the release's built mark", exc) from exc


def switch(host, commit):
    """Point `current` at releases/<commit> atomically (a new link renamed over the old one)."""
    p = paths(host)
    rel = release_dir(host, commit)
    info = marker(rel)
    if not info or info.get("commit") != commit:
        return False, "releases/%s is not there (pruned?): deploy it again" % commit[:12]
    before = current_commit(host)
    tmp = os.path.join(p["root"], ".current-%d" % os.getpid())
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", commit), tmp)
        os.replace(tmp, p["current"])
    except OSError as exc:
        raise WriteFailed(p["current"], "the current link", exc) from exc
    return True, "current -> releases/%s (was %s)" % (commit[:12], (before or "-")[:12])


def prune(host, keep, protect):
    """Remove all but the `keep` newest releases; never `current` nor a protected commit."""
    p = paths(host)
    cur = current_commit(host)
    rels = []
    for name in _list(p["releases"]):
        if name.startswith("."):
            continue
        info = marker(os.path.join(p["releases"], name)) or {}
        rels.append((info.get("at") or 0, name))
    rels.sort(reverse=True)
    removed = []
    for _, name in rels[keep:]:
        if name == cur or name in protect:
            continue
        shutil.rmtree(os.path.join(p["releases"], name), ignore_errors=True)
        removed.append(name)
    return removed
