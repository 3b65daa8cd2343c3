"""Invoke entry point: the task collection lives in ops.tasks (also served by the `ops` script)."""

from ops.tasks import ns  # noqa: F401
