"""State files on the host: one JSON file per service, written atomically.

A state file records the identity of what the tool started (pid, start time, boot id, process
group), where its log was when it started, and whether the user stopped it on purpose.
"""

import json
import os
import time


def expand(path, base=None):
    """~ and $VARS expanded on the host; a relative path is taken under base (or $HOME)."""
    p = os.path.expandvars(os.path.expanduser(path))
    if not os.path.isabs(p):
        p = os.path.join(base or os.path.expanduser("~"), p)
    return os.path.normpath(p)


class WriteFailed(OSError):
    """A file the agent had to write was not written (disk full, read-only, permissions): carries
    the file's path and what it holds, so the client can say exactly what was lost."""

    def __init__(self, path, what, cause):
        super().__init__(cause.errno, cause.strerror or str(cause), path)
        self.what = what


def write_json_atomic(path, data, what=None):
    """Write JSON to path atomically (temp file + rename). A failure raises WriteFailed naming the
    path and `what` it holds; the old content is left as it was."""
    try:
        _write_json_atomic(path, data)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(path, what or "a state file", exc) from exc


def _write_json_atomic(path, data):
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    import tempfile  # here, not at start-up (~3 ms of the agent's)

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"corrupt": True}


class StateStore:
    def __init__(self, state_dir):
        self.root = expand(state_dir)

    def service_path(self, name):
        return os.path.join(self.root, "services", name + ".json")

    def load(self, name):
        return read_json(self.service_path(name))

    def save(self, name, data):
        data = dict(data)
        data["updated_at"] = time.time()
        write_json_atomic(self.service_path(name), data, "the state of service %s" % name)
        return data

    def mark(self, name, **fields):
        """Update some fields of a service's state (a corrupt file is replaced, not carried on)."""
        data = self.load(name)
        if not data or data.get("corrupt"):
            data = {"name": name}
        data.update(fields)
        return self.save(name, data)
