"""Peer of bench case `warm`: the floor's deploy steps (bench/deploy_steps.sh) as a Fabric user
writes them: one Connection, one `c.run` per step, the bundle sent with `c.put`.

    python bench/peers/fabric_deploy.py SSH_CONFIG HOST REPO CHECKOUT STATE_DIR API_PORT
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from fabric import Config, Connection

HERE = Path(__file__).resolve().parents[1]


def main() -> int:
    cfg, host, repo, co, state, port = sys.argv[1:7]
    source = f". {shlex.quote(str(HERE / 'deploy_steps.sh'))}; declare -p POLL; declare -f"
    prelude = subprocess.run(["bash", "-c", source], capture_output=True, text=True, check=True).stdout
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.NamedTemporaryFile(suffix=".bundle") as bundle:
        subprocess.run(["git", "-C", repo, "bundle", "create", "-q", bundle.name, "HEAD"], check=True)
        c = Connection(host, config=Config(runtime_ssh_path=cfg))
        q = shlex.quote

        def step(cmd: str) -> None:
            c.run(prelude + "\n" + cmd, hide=True, in_stream=False)

        step(f"step_lock {q(state)}")
        try:
            c.put(bundle.name, f"{state}/deploy.bundle")
            step(f"step_deliver {q(co)} {q(state + '/deploy.bundle')} {commit}")
            step(f"step_purge {q(co)}")
            step(f"step_stop {q(state)} {port}")
            step(f"step_start_daemon {q(co)} {q(state)} {port}")
            step(f"step_check_api {port}")
            step(f"step_start_worker {q(co)} {q(state)}")
            step(f"step_verify {q(state)} {port} {commit}")
            step(f"step_record {q(state)} {commit}")
        finally:
            step(f"step_unlock {q(state)}")
            c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
