"""Deploy hooks: named custom steps at fixed points of a deploy, declared in hosts.toml.

```toml
[hooks.compile]                           # a named step: a command run on the host...
cmd = "python3 -m compileall -q scripts"  # (a string for sh, or an argv list; in the checkout)
timeout = 120                             # s (default 300); its process group is killed after it

[hooks.warm]                              # ...or a Python function of yours
call = "deploy_steps:warm_cache"          # module (next to hosts.toml) : function(session) -> verdict

[hosts.panda]
hooks = { after_deliver = ["compile"], after_start = ["warm"] }
```

The points, in deploy order: ``after_deliver`` (the new code is in the checkout, nothing stopped
yet), ``before_stop``, ``after_start`` (the services passed their gates), ``after_verify``.
Each hook is one step of the deploy, journaled as ``hook NAME``; a failing hook fails the deploy
like a built-in step, and where a failed step triggers a rollback (anything after delivery) it
does too. Hooks do not run during the rollback itself (it restores the code that ran before,
with its own stop, start and verify).

A ``cmd`` hook passes when it exits 0 in time; a ``call`` hook receives an
:class:`ops.api.Session` and its return value is judged as a custom step's
(:func:`ops.api.judge`: ``None``/``True``/a string pass, ``False`` or anything whose ``.ok`` is
false fails); an :class:`ops.errors.OpsError` it raises fails it with its message.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POINTS = ("after_deliver", "before_stop", "after_start", "after_verify")
DEFAULT_TIMEOUT = 300.0
KEYS = ("cmd", "call", "timeout", "cwd")
_CALL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_VAR_RE = re.compile(r"\$\{(\w+)\}")

Fail = Callable[..., Exception]  # ctx.fail(where, message, advice="")


@dataclass(frozen=True)
class Hook:
    """A named custom step (``[hooks.NAME]``)."""

    name: str
    cmd: str | tuple[str, ...] | None = None
    call: str | None = None  # "module:function", the module found next to hosts.toml
    timeout: float = DEFAULT_TIMEOUT
    cwd: str | None = None  # relative to the checkout
    base_dir: str = "."  # hosts.toml's directory (where `call` modules are imported from)


def parse_definitions(raw: Any, fail: Fail, base_dir: str) -> dict[str, Hook]:
    """``[hooks.NAME]`` tables -> Hook (no placeholders yet), or fail(...) naming table and key."""
    if not isinstance(raw, dict):
        raise fail("hooks", "must be a table of [hooks.NAME] tables")
    out: dict[str, Hook] = {}
    for name, t in raw.items():
        where = f"hooks.{name}"
        if not isinstance(t, dict):
            raise fail(where, "must be a table", 'e.g. [hooks.compile] with cmd = "..."')
        unknown = [k for k in t if k not in KEYS]
        if unknown:
            raise fail(where, f"unknown key '{unknown[0]}'", f"a hook takes: {', '.join(KEYS)}")
        if ("cmd" in t) == ("call" in t):
            raise fail(where, "needs exactly one of 'cmd' and 'call'",
                       'cmd = "a command run on the host", or call = "module:function"')
        cmd = t.get("cmd")
        if cmd is not None and not (
            (isinstance(cmd, str) and cmd.strip())
            or (isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd))
        ):
            raise fail(where, "key 'cmd' must be a command string or a non-empty list of strings")
        call = t.get("call")
        if call is not None and (not isinstance(call, str) or not _CALL_RE.match(call)):
            raise fail(where, f"key 'call' must be 'module:function', got {call!r}",
                       "a Python module next to hosts.toml and a function in it taking a session")
        timeout = t.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise fail(where, f"key 'timeout' must be a number of seconds above 0, got {timeout!r}")
        cwd = t.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise fail(where, "key 'cwd' must be a path string")
        argv = tuple(cmd) if isinstance(cmd, list) else cmd
        out[name] = Hook(name, argv, call, float(timeout), cwd, base_dir)
    return out


def parse_points(raw: Any, where: str, defs: Mapping[str, Hook], fail: Fail,
                 variables: Mapping[str, str]) -> dict[str, tuple[Hook, ...]]:
    """A host's ``hooks = { POINT = [NAMES] }`` -> the hooks per point, ``${path}``,
    ``${state_dir}`` and ``${host}`` filled in for this host."""
    if not isinstance(raw, dict):
        raise fail(where, "key 'hooks' must be a table of point = [hook names]",
                   f"points: {', '.join(POINTS)}")
    out: dict[str, tuple[Hook, ...]] = {}
    for point, names in raw.items():
        if point not in POINTS:
            raise fail(where, f"key 'hooks' has unknown point '{point}'", f"points: {', '.join(POINTS)}")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise fail(where, f"key 'hooks.{point}' must be a list of hook names")
        hooks = []
        for n in names:
            if n not in defs:
                defined = f" (defined: {', '.join(sorted(defs))})" if defs else ""
                raise fail(where, f"key 'hooks.{point}' names hook '{n}', which is not defined",
                           f"add a [hooks.{n}] table{defined}")
            hooks.append(_fill(defs[n], variables, fail))
        out[point] = tuple(hooks)
    return out


def _fill(hook: Hook, variables: Mapping[str, str], fail: Fail) -> Hook:
    def sub(text: str, shell: bool = False) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(1) not in variables:
                known = ", ".join(f"${{{v}}}" for v in variables)
                raise fail(f"hooks.{hook.name}", f"uses unknown variable {m.group(0)}", f"known: {known}")
            value = variables[m.group(1)]
            return shlex.quote(value) if shell else value  # a string cmd is run by sh

        return _VAR_RE.sub(repl, text)

    cmd = hook.cmd
    if isinstance(cmd, str):
        cmd = sub(cmd, shell=True)
    elif isinstance(cmd, tuple):
        cmd = tuple(sub(x) for x in cmd)
    return Hook(hook.name, cmd, hook.call, hook.timeout, sub(hook.cwd) if hook.cwd else None, hook.base_dir)


# --- running --------------------------------------------------------------------------------------


def load_call(hook: Hook) -> Callable[..., Any]:
    """The function a ``call`` hook names, imported from next to hosts.toml."""
    from ops.errors import UsageError

    assert hook.call is not None
    module_name, func = hook.call.split(":")
    base = str(Path(hook.base_dir).resolve())
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error is theirs to fix, named
        raise UsageError(f"hook '{hook.name}': cannot import {module_name!r} from {base}: "
                         f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UsageError(f"hook '{hook.name}': {module_name}.{func} is not a function")
    return fn


def run(session: Any, hook: Hook) -> tuple[bool, str]:
    """Run one hook on a host (``session``: the deploy's ``HostSession``) -> (ok, detail)."""
    from ops import api
    from ops.errors import OpsError

    s = api.Session(session)
    if hook.cmd is not None:
        r = s.run(list(hook.cmd) if isinstance(hook.cmd, tuple) else hook.cmd, cwd=hook.cwd,
                  timeout=hook.timeout)
        return r.ok, r.summary()
    try:
        value = load_call(hook)(s)
    except OpsError:
        raise
    except Exception as exc:  # a bug in the user's hook fails the step, with its name
        return False, f"{hook.call} raised {type(exc).__name__}: {exc}"
    ok, detail = api.judge(value)
    return ok, detail or ("ok" if ok else "failed")
