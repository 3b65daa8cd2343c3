"""Invoke entry point: the task collection lives in ops.tasks (also served by the `ops` script)."""

from ops.cli import adopt
from ops.tasks import ns  # noqa: F401

adopt()  # `inv` exits 2 on a bad flag or task (with a suggestion), completes host and service names
