"""Two custom runbook steps written on ops.api, next to the built-in tasks.

    inv -r examples/custom --list
    inv -r examples/custom prune-trees --host box            # asks you to type "box"
    inv -r examples/custom api-call --host box --name alice

- ``prune-trees`` (the spawn-loop runbook): list the ``trees/gh-*`` work trees in the host's
  checkout, ask the operator to type the host name (``--yes`` in scripts), remove exactly those,
  then ``git worktree prune`` so git forgets them too. ``--dry-run`` only lists.
- ``api-call`` ("run one task and check that logs/api/api-calls-*.jsonl appeared"): do one unit of
  work on the host (an authenticated lookup through the service's API, its token read from the
  header file hosts.toml declares, ON the host: never in argv), then check the call log file
  appeared since, with that call in it.

Every step is journaled (``inv journal``), runs on every host ``--host`` selects, in parallel,
and the task's exit code says how it went (0 ok, 1 a step failed, 2 bad arguments, 3 unreachable).
"""

from __future__ import annotations

import json

from ops import api
from ops.tasks import ns  # the built-in tasks (status, deploy, journal, verify.*...)

# Run by sh on the host: a constant script, no inventory value in it (those travel in argv).
LIST_TREES = 'for d in trees/gh-*; do if [ -d "$d" ] && [ ! -L "$d" ]; then echo "$d"; fi; done'


@api.task(help={"dry-run": "list what would be removed; remove nothing"})
def prune_trees(c: api.TaskContext, dry_run: bool = False) -> None:
    """Remove trees/gh-* work trees and prune git's worktree list (asks first)."""
    found: dict[str, list[str]] = {}

    def list_trees(s: api.Session) -> api.Check:
        r = s.run(["sh", "-c", LIST_TREES], check=True)
        found[s.name] = r.stdout.split()
        stale = s.run(["git", "worktree", "prune", "--dry-run", "-v"], check=True)
        n_stale = len([ln for ln in (stale.stdout + stale.stderr).splitlines() if ln.strip()])
        return api.Check(True, f"{len(found[s.name])} tree(s): {' '.join(found[s.name]) or '-'}; "
                               f"{n_stale} stale worktree entr{'y' if n_stale == 1 else 'ies'}")

    listed = c.each("list-trees", list_trees)
    hosts = [h for h, o in listed.items() if o.ok]
    if dry_run or not hosts:
        return
    c.confirm(f"remove {sum(len(found[h]) for h in hosts)} trees/gh-* work tree(s) and prune worktrees",
              hosts=hosts)

    def prune(s: api.Session) -> str:
        trees = found[s.name]
        if trees:  # exactly what was listed and confirmed, nothing matched anew
            s.run(["rm", "-rf", "--", *trees], check=True)
        s.run(["git", "worktree", "prune", "-v"], check=True)
        return f"removed {len(trees)} tree(s){': ' + ' '.join(trees) if trees else ''}; worktrees pruned"

    c.each("prune-trees", prune, hosts=hosts)


# One authenticated request, its token read from a file on the host; prints the host's clock
# before it and the status. argv: url, header name, token file (or "" for none).
WORK = """
import sys, time, json, urllib.request, urllib.error
url, header, token_file = sys.argv[1:4]
req = urllib.request.Request(url)
if header:
    with open(token_file) as f:
        req.add_header(header, f.read().strip())
t0 = time.time()
try:
    status = urllib.request.urlopen(req, timeout=10).status
except urllib.error.HTTPError as e:
    status = e.code
print(json.dumps({"t0": t0, "status": status}))
"""

# Did a file matching the glob appear (or change) since t0, with a JSON line naming `name`?
# argv: glob, t0, name. Prints {"files": [...], "hits": N}.
CHECK = """
import glob, json, os, sys
pattern, t0, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
files, hits = [], 0
for path in sorted(glob.glob(pattern)):
    if os.path.getmtime(path) < t0 - 1:
        continue
    files.append(path)
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("name") == name and e.get("ts", 0) >= t0 - 1:
                hits += 1
print(json.dumps({"files": files, "hits": hits}))
"""


@api.task(help={
    "service": "the API service whose lookup is the unit of work (default demo_api)",
    "name": "the name to look up (default alice)",
    "calls": "the call log glob, relative to the checkout (default logs/api/api-calls-*.jsonl)",
})
def api_call(c: api.TaskContext, service: str = "demo_api", name: str = "alice",
             calls: str = "logs/api/api-calls-*.jsonl") -> None:
    """Do one lookup through the API on the host, then check its call log file appeared."""

    def work_then_check(s: api.Session) -> api.Check:
        try:
            svc = s.host.service(service)
        except KeyError:
            raise api.UsageError(f"host '{s.name}' runs no service '{service}'",
                                 "pass --service NAME") from None
        if svc.port is None:
            raise api.UsageError(f"service '{service}' declares no port")
        header, token_file = next(iter(svc.health.header_files.items()), ("", "")) if svc.health else ("", "")
        url = f"http://127.0.0.1:{svc.port}/v1/lookup?name={name}"
        work = s.run([s.host.python, "-c", WORK, url, header, s.path(token_file) if token_file else ""],
                     timeout=30, check=True)
        done = json.loads(work.stdout)
        if done["status"] != 200:
            return api.Check(False, f"the lookup of {name!r} answered {done['status']}")
        found = json.loads(s.run([s.host.python, "-c", CHECK, s.path(calls), str(done["t0"]), name],
                                 timeout=30, check=True).stdout)
        if not found["hits"]:
            where = ", ".join(found["files"]) or "no file"
            return api.Check(False, f"the lookup answered 200 but no {calls} recorded it since ({where})")
        return api.Check(True, f"lookup of {name!r} answered 200 and {found['files'][-1]} recorded it")

    c.each("api-call", work_then_check)


ns.add_task(prune_trees)
ns.add_task(api_call)
