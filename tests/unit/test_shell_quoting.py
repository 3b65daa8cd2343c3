"""Values filled into a command that sh runs (build steps, deploy hooks, a `cmd` check given as a
string) are shell-quoted: a checkout path with a space or a `;` stays one word and runs nothing.
An argv list is not run by a shell, so its words are filled in as they are."""

from __future__ import annotations

import shlex
from typing import Any

from ops import inventory

ODD = "/srv/my app;touch pwned"


def data(**host: Any) -> dict[str, Any]:
    return {
        "hosts": {"box": {"local": True, "path": ODD, "state_dir": "/tmp/st", "services": ["svc"], **host}},
        "services": {
            "svc": {
                "cmd": "python3 svc.py",
                "build": ["make -C ${path} deps"],
                "checks": [{"cmd": "test -d ${path}/logs"}, {"cmd": ["test", "-d", "${path}/logs"]}],
            }
        },
        "hooks": {"mark": {"cmd": "echo deployed > ${path}/DEPLOYED"}},
    }


def test_build_steps_hooks_and_cmd_checks_quote_the_values_they_fill_in() -> None:
    inv = inventory.parse(data(build=["ls ${path}"], hooks={"after_deliver": ["mark"]}), "hosts.toml")
    host = inv.host("box")
    steps = [b.cmd for b in host.build_steps()]
    assert steps == [f"ls {shlex.quote(ODD)}", f"make -C {shlex.quote(ODD)} deps"]
    assert shlex.split(steps[0]) == ["ls", ODD]  # one word, and no `;` for sh to act on
    [hook] = host.hooks["after_deliver"]
    assert hook.cmd == f"echo deployed > {shlex.quote(ODD)}/DEPLOYED"
    as_string, as_argv = host.service("svc").checks
    assert as_string.target == f"test -d {shlex.quote(ODD)}/logs"
    assert as_argv.target == ("test", "-d", f"{ODD}/logs")  # argv: no shell, no quotes
