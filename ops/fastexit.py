"""Leave a finished CLI run without the interpreter's slow teardown.

Once a task is done (its sessions closed, its output written), tearing down the interpreter
(garbage-collecting every module of invoke, paramiko, cryptography and rich, running their atexit
hooks) takes 50-90 ms of a ~0.5 s run and changes nothing anyone sees. ``done(code)`` records how
the run ends; an atexit hook (run first: registered last) flushes stdout/stderr and the logging
handlers and leaves with that code at once. Only the real command line does this (``inv``,
``invoke``, ``python -m invoke``, ``ops``), never a test or a library caller; ``OPS_NO_FAST_EXIT=1``
turns it off; a task that ends in an unexpected exception ``cancel()``s it, so Python reports
that as usual. Non-daemon threads were already joined when atexit hooks run.
"""

from __future__ import annotations

import atexit
import os
import sys

CLI_NAMES = frozenset({"inv", "invoke", "ops"})
_state: dict[str, int | bool | None] = {"code": None, "armed": False}


def is_cli() -> bool:
    if os.environ.get("OPS_NO_FAST_EXIT"):
        return False
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == "invoke.__main__":
        return True
    return bool(sys.argv) and os.path.basename(sys.argv[0]) in CLI_NAMES


def done(code: int) -> None:
    """The task finished; the process ends with ``code`` unless a later task says otherwise."""
    if not is_cli():
        return
    _state["code"] = int(code)
    if not _state["armed"]:
        atexit.register(_leave)
        _state["armed"] = True


def cancel() -> None:
    _state["code"] = None


def _leave() -> None:
    code = _state["code"]
    if code is None:
        return
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code))
