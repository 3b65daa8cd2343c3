"""ops: runbook automation for a handful of long-lived services on a few machines.

Invoke turns bytecode caching off before it imports a tasks file (``sys.dont_write_bytecode``, its
``--write-pyc`` flag), so that a project's directory is not littered; it stays off for everything
imported after. For this package that meant compiling its ~40 modules from source on every `inv`
(~45 ms of CPU per command, a tenth of a cold `inv status`). Its own bytecode is cached like any
installed library's, unless the person asked otherwise (``-B`` or ``PYTHONDONTWRITEBYTECODE``,
both seen in ``sys.flags``).
"""

import sys

sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
