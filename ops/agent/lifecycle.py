"""Start, stop and status of services, run on the host in one agent call per phase.

The work is split by job: hostview.py (the evidence every phase reads), ownership.py (what is
whose), status.py, spawn.py (start and gates) and terminate.py (stop and sweep). Lifecycle joins
them for the agent's ops and the checks (checks.py), which use only its public names.
"""

from .hostview import KILL_WAIT, LOG_TAIL, POLL  # noqa: F401 (the phases' constants, re-exported)
from .spawn import SETTLE, WAIT_NOTE, StartMixin, missing_checkout  # noqa: F401
from .status import StatusMixin
from .terminate import StopMixin


class Lifecycle(StatusMixin, StartMixin, StopMixin):
    """Status, start and stop of a host's services (one request's worth of state)."""
