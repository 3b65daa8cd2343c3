"""Facts about a host that this client remembers between runs, in its local cache directory.

Today one fact: the interpreter the host's ``python`` resolved to (the agent's ``sys.executable``,
reported in its hello) and what the way there changed in the environment (``env``: pyenv's shim
prepends PATH, sets PYENV_VERSION..., see ops/agent/loginenv.py), replayed by the agent when it is
started directly. Exec'ing that path directly skips whatever stands in front of it, such as
pyenv's shim (a bash script that runs ``pyenv exec``: ~100 ms and ~70 ms of CPU per start). The
run command still checks the path is executable and falls back to the configured ``python``
otherwise, and a start that fails with the remembered path forgets it and starts again the
configured way (ops/agentclient.py), so a stale entry costs one retry, never a wrong answer.

Entries are keyed by inventory host name, transport and configured interpreter, one small JSON
file each, written atomically; an unreadable or damaged entry reads as empty.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ops.agentpkg import local_cache_dir


def key(host_name: str, transport: str, python: str) -> str:
    return f"{host_name}\0{transport}\0{python}"


def _path(k: str) -> Path:
    return local_cache_dir() / "hosts" / (hashlib.sha256(k.encode()).hexdigest()[:24] + ".json")


def load(k: str) -> dict[str, Any]:
    try:
        data = json.loads(_path(k).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("key") != k:
        return {}
    return data


def remember(k: str, **facts: Any) -> None:
    path = _path(k)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".tmp.{os.getpid()}.{path.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the host's environment
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({**load(k), **facts, "key": k}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write only costs the shim next time


def forget(k: str) -> None:
    try:
        _path(k).unlink()
    except OSError:
        pass
