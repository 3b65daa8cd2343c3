"""verify.restart looks for the new child among the supervisor's own tree only (checks.py
Checks._under): what is born under the supervisor is the service's by its tree, so no ownership
domain (and its marker scan of every process) is built on each 20 ms poll. And the domains judged
on one snapshot share one evidence reader (hostview.py probe_of)."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from ops.agent import procs
from ops.agent.checks import Checks
from ops.agent.hostview import HostView

TAG = f"restart-candidates-{time.time_ns()}"


@pytest.fixture
def family(tmp_path):
    """A 'supervisor' (sh running a script: its own command line does not match) with a matching
    child that forks a worker of the same command line, and an identical process outside its tree."""
    script = tmp_path / "sup.sh"
    script.write_text(f"{sys.executable} -c 'import os,time; os.fork(); time.sleep(60)' {TAG} &\n"
                      "sleep 60 &\nwait\n")
    sup = subprocess.Popen(["sh", str(script)])
    outside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", TAG])
    try:
        deadline = time.monotonic() + 20
        while True:
            table = procs.snapshot()
            kids = [p for p in procs.descendants(table, sup.pid)
                    if p.argv[:1] == (sys.executable,) and TAG in p.cmdline]
            if len(kids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(kids) == 2, "the child and its forked worker did not show up"
        yield sup, outside, table
    finally:
        for p in (sup, outside):
            for d in procs.descendants(procs.snapshot(), p.pid):
                subprocess.run(["kill", "-9", str(d.pid)], check=False)
            p.kill()
            p.wait()


def test_only_the_supervisors_tree_is_searched_and_forked_workers_are_one_instance(family) -> None:
    sup, outside, table = family
    me = SimpleNamespace(lc=SimpleNamespace(protected=set()))
    found = Checks._under(me, table, sup.pid, TAG)
    assert len(found) == 1  # the forked worker is the same instance
    assert found[0].pid != outside.pid
    assert found[0].pid in {p.pid for p in procs.descendants(table, sup.pid)}
    assert Checks._under(me, table, outside.pid, TAG) == []  # nothing matches under the other one


def test_domains_on_one_snapshot_share_one_probe(tmp_path) -> None:
    hv = HostView({"state_dir": str(tmp_path / "state"), "path": str(tmp_path)})
    a, b = procs.snapshot(), procs.snapshot()
    assert hv.probe_of(a) is hv.probe_of(a)
    assert hv.probe_of(b) is not hv.probe_of(a)
