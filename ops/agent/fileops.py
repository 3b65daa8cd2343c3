"""Small files on the host, for user-written runbook steps (ops.api: Session.read_file/write_file).

- Bounded: a read refuses a file larger than ``max_bytes`` (default 1 MiB) instead of carrying it
  whole through the agent's channel; a write refuses content larger than that.
- Redacted: text read back has the secrets of the host's services (env_file values, health header
  files) replaced by ``***``, as log tails and command output are. A secret file is not something
  to read back through this.
- Atomic: a write goes to a temporary file in the same directory, is flushed to disk, then renamed
  over the target, so a reader never sees half a file (and a failed write leaves the old one).

Errors a caller can act on (missing, too large, not UTF-8, a directory, permission) come back as
``{"ok": false, "error": ...}`` naming the path, never as an agent failure.

Python >= 3.8, stdlib only.
"""

import base64
import os
import stat
import tempfile

from .state import expand

MAX_BYTES = 1024 * 1024


def _secrets(args):
    from .secrets import Secrets

    secrets = Secrets(expand(args.get("base") or "~"))
    for spec in args.get("all_services") or []:
        if spec:
            secrets.load_spec(spec)
    return secrets


def _path(args):
    return expand(args["path"], expand(args.get("base") or "~"))


def _fail(path, message):
    return {"ok": False, "path": path, "error": message}


def op_file_read(args, emit):
    """args: path (relative: under base, the checkout), max_bytes, base, all_services (whose secrets
    are redacted). -> {ok, path, text, size, mtime} or {ok: false, error}."""
    path = _path(args)
    limit = int(args.get("max_bytes") or MAX_BYTES)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return dict(_fail(path, "%s does not exist" % path), missing=True)
    except OSError as exc:
        return _fail(path, "cannot read %s: %s" % (path, exc.strerror or exc))
    if stat.S_ISDIR(st.st_mode):
        return _fail(path, "%s is a directory, not a file" % path)
    if st.st_size > limit:
        return _fail(path, "%s is %d bytes, more than the %d bytes read_file reads (max_bytes)" % (
            path, st.st_size, limit))
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        return _fail(path, "cannot read %s: %s" % (path, exc.strerror or exc))
    if len(raw) > limit:  # it grew since the stat
        return _fail(path, "%s is more than the %d bytes read_file reads (max_bytes)" % (path, limit))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _fail(path, "%s is not UTF-8 text (byte 0x%02x at offset %d)" % (
            path, raw[exc.start], exc.start))
    return {"ok": True, "path": path, "text": _secrets(args).redact(text), "size": len(raw),
            "mtime": st.st_mtime}


def op_file_write(args, emit):
    """args: path, data (base64), mode (int, optional; default: the old file's, else 0o644 less the
    umask), make_dirs, max_bytes, base. Atomic (temp file + fsync + rename). -> {ok, path, size}."""
    path = _path(args)
    limit = int(args.get("max_bytes") or MAX_BYTES)
    data = base64.b64decode(args.get("data") or "")
    if len(data) > limit:
        return _fail(path, "%d bytes is more than the %d bytes write_file writes (max_bytes)" % (
            len(data), limit))
    d = os.path.dirname(path)
    if os.path.isdir(path):
        return _fail(path, "%s is a directory, not a file" % path)
    try:
        if args.get("make_dirs"):
            os.makedirs(d, exist_ok=True)
        mode = args.get("mode")
        if mode is None:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except OSError:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o644 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=".ops-write-", dir=d)
    except OSError as exc:
        return _fail(path, "cannot write %s: %s" % (path, exc.strerror or exc))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, int(mode))
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return _fail(path, "cannot write %s: %s" % (path, exc.strerror or exc))
    return {"ok": True, "path": path, "size": len(data)}


OPS = {
    "file_read": op_file_read,
    "file_write": op_file_write,
}
