"""Peer of `inv status`: one Fabric Connection, one `c.run('true')` (what a Fabric user's status
check costs at the least).

    python bench/peers/fabric_run.py SSH_CONFIG HOST
"""

import sys

from fabric import Config, Connection

if __name__ == "__main__":
    c = Connection(sys.argv[2], config=Config(runtime_ssh_path=sys.argv[1]))
    c.run("true", hide=True, in_stream=False)
    c.close()
