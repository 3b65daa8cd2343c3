"""The `ops` console script: the same task collection as `inv`, runnable from any directory."""

from __future__ import annotations

import os
import sys

from invoke import Argument, Program


class OpsProgram(Program):
    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(
                names=("inventory",), help="path to hosts.toml (default: $OPS_INVENTORY or ./hosts.toml)"
            ),
        ]

    def parse_core(self, argv):  # type: ignore[no-untyped-def]
        super().parse_core(argv)
        path = self.args.inventory.value
        if path:
            os.environ["OPS_INVENTORY"] = os.path.abspath(path)


def main(argv: list[str] | None = None) -> None:
    from ops.tasks import ns

    OpsProgram(name="ops", binary="ops", namespace=ns, version="0.1.0").run(
        argv if argv is not None else sys.argv
    )
