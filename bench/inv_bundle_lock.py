"""`inv`, with ops.deploy.make_bundle serialized: a stop-gap the fan-out case needs (bench only).

BUG (ops/deploy.py, reported with issue 7's benchmark): make_bundle() points ONE shared ref,
refs/ops/deploy, of the local repository at the commit, bundles it, and deletes the ref. With
several hosts deploying in parallel (one thread each), one thread deletes or moves the ref while
another bundles it: "fatal: ambiguous argument 'refs/ops/deploy'" or "Refusing to create empty
bundle", and those hosts fail. It shows as soon as hosts probe at about the same moment (10-30
fast hosts). Serializing make_bundle (a lock around it) is the fix; until ops/deploy.py has it,
the fan-out case runs `inv` through this file so that it measures fan-out, not the race. The
moment ops.deploy serializes bundles itself, this shim changes nothing (the lock is uncontended).

    python bench/inv_bundle_lock.py ARGS...   ==   inv ARGS...
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invoke.main import program  # noqa: E402  (exactly what the `inv` script runs)

from ops import deploy  # noqa: E402

_lock = threading.Lock()
_make_bundle = deploy.make_bundle


def make_bundle(repo: str, commit: str, basis: str | None) -> bytes:
    with _lock:
        return _make_bundle(repo, commit, basis)


deploy.make_bundle = make_bundle

if __name__ == "__main__":
    sys.exit(program.run())
