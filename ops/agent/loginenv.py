"""The environment a wrapper interpreter (a shim such as pyenv's) gives the agent, replayed when the
client execs the resolved interpreter directly (ops/hostcache.py, ops/agentpkg.run_command).

Started the configured way, the run command hands the login shell's environment to the agent in
OPS_LOGIN_ENV (``env -0``, hex encoded; never in argv). ``delta`` is what the wrapper changed in it
(pyenv: PATH prepended with the version's bin directory, PYENV_VERSION, SHLVL...). The client
keeps that delta with the resolved path; started directly next time, the agent reads it on stdin
before its hello (OPS_ENV_STDIN) and ``apply``s it, so the agent and everything it starts see the
very environment they would have seen through the wrapper. Stdlib only, Python >= 3.8.
"""

import binascii
import os

LOGIN = "OPS_LOGIN_ENV"
FROM_STDIN = "OPS_ENV_STDIN"


def parse_env0(hex_text):
    """``env -0 | od -An -vtx1`` text (hex, any whitespace) -> {name: value}; None if unreadable."""
    try:
        raw = binascii.unhexlify("".join(hex_text.split()))
    except (binascii.Error, ValueError):
        return None
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    return env or None


def delta(login, now):
    """What turns the login environment into ``now``: {name: ["prepend", text] | ["set", value] |
    ["unset"]} (pure)."""
    out = {}
    for k in sorted(set(login) | set(now)):
        if k in (LOGIN, FROM_STDIN):
            continue
        before, after = login.get(k), now.get(k)
        if before == after:
            continue
        if after is None:
            out[k] = ["unset"]
        elif before is not None and after.endswith(before) and len(after) > len(before):
            out[k] = ["prepend", after[: len(after) - len(before)]]
        else:
            out[k] = ["set", after]
    return out


def apply(changes, env=None):
    """Apply a ``delta`` to env (default os.environ)."""
    env = os.environ if env is None else env
    for k, change in sorted((changes or {}).items()):
        if not isinstance(change, list) or not change:
            continue
        if change[0] == "unset":
            env.pop(k, None)
        elif change[0] == "set" and len(change) == 2:
            env[k] = change[1]
        elif change[0] == "prepend" and len(change) == 2:
            env[k] = change[1] + env.get(k, "")


def at_start(inp):
    """Called before the hello: (delta to report, or None). Applies a delta sent on stdin when the
    client started this interpreter directly; computes the wrapper's delta when started the
    configured way with the login environment at hand."""
    import json

    if os.environ.pop(FROM_STDIN, None):
        line = inp.readline()
        try:
            apply(json.loads(line).get("env"))
        except (ValueError, AttributeError):
            pass
        return None
    login = os.environ.pop(LOGIN, None)
    if login is None:
        return None
    parsed = parse_env0(login)
    if parsed is None:
        return None
    return delta(parsed, dict(os.environ))
