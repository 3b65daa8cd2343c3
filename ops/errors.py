"""One error tree. Each error knows its exit code and a one-line piece of advice.

Only tasks translate errors into exit codes (``raise Exit``); library code raises these.
"""

from __future__ import annotations


class OpsError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code = 1
    advice = ""

    def __init__(self, message: str, advice: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if advice is not None:
            self.advice = advice

    def render(self) -> str:
        """The message and its advice, as shown to a person."""
        if self.advice:
            return f"{self.message}\n  -> {self.advice}"
        return self.message


class InventoryError(OpsError):
    """hosts.toml is missing, malformed or inconsistent. Always names file, table and key."""

    exit_code = 2

    def __init__(self, path: str, where: str, message: str, advice: str = "") -> None:
        self.path = path
        self.where = where
        text = f"{path}: [{where}] {message}" if where else f"{path}: {message}"
        super().__init__(text, advice or "fix hosts.toml and run `inv hosts` to validate it")


class UsageError(OpsError):
    """A task was called with arguments that do not fit the inventory (unknown host, service...)."""

    exit_code = 2


class TransportError(OpsError):
    """A host could not be reached or a command could not be run on it."""

    exit_code = 3

    def __init__(self, host: str, message: str, advice: str | None = None) -> None:
        self.host = host
        super().__init__(f"{host}: {message}", advice)


class Unreachable(TransportError):
    advice = "check the host is up and `ssh` to it works with the same alias"


class HostKeyChanged(TransportError):
    advice = (
        "the host's key differs from the one recorded in known_hosts: if the change is expected, "
        "remove the old entry with `ssh-keygen -R HOST` and run again"
    )


class HostKeyUnknown(TransportError):
    """StrictHostKeyChecking yes (or ask, which cannot ask here) and the host's key is not known."""


class CommandTimeout(TransportError):
    advice = "the host did not answer in time; raise command_timeout for this host if it is slow"


class AgentError(OpsError):
    """The on-host agent failed or answered something the client does not understand."""

    exit_code = 3


class ActionFailed(OpsError):
    """A lifecycle action (start, stop, gate, check) failed on a host."""

    exit_code = 1


class HostError(ActionFailed):
    """A system error on the host (disk full, read-only filesystem, permission denied) during an
    operation: the host answered, so it is not unreachable; the message names the path and what
    was not written."""

    def __init__(self, message: str, advice: str | None = None, errno_name: str = "",
                 path: str | None = None) -> None:
        super().__init__(message, advice)
        self.errno_name = errno_name
        self.path = path


class LinkDied(TransportError):
    """The connection to a host died (or stopped answering) in the middle of a task."""

    advice = ("the host's agent finishes its current step on its own and releases the deploy lock; "
              "once the host is reachable again, run the same command again: it converges")


class LockHeld(OpsError):
    exit_code = 4


class Interrupted(OpsError):
    """The user pressed Ctrl-C; work stopped at a step boundary and locks were released."""

    exit_code = 130
