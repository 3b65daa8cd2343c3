"""Secrets are read on the host from files and never leave it.

Every secret value read during a request is remembered so that any text sent back (log tails,
error details) can be redacted before it leaves the host.
"""

from .state import expand


def parse_env_file(text):
    """KEY=VALUE lines (optional `export `, quotes, # comments) -> dict. Bad lines are skipped."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


SEEN = set()  # every secret value any request of this agent read: its error events are redacted


class _Values(set):
    """A set of secret values that also records each one in SEEN."""

    def add(self, value):
        SEEN.add(value)
        set.add(self, value)


class Secrets:
    """Reads secret files (relative paths are taken under `base`, the checkout) and remembers
    their values for redaction."""

    def __init__(self, base=None):
        self.base = base
        self.values = _Values()

    def read_file(self, path):
        """The stripped content of a secret file on the host, or None if unreadable."""
        try:
            with open(expand(path, self.base), "rb") as f:
                value = f.read().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):  # the step that needs it says so (http_check)
            return None
        if value:
            self.values.add(value)
        return value

    def env_file(self, path):
        """(env dict, error or None)."""
        p = expand(path, self.base)
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as exc:
            return {}, "cannot read env_file %s: %s" % (p, exc.strerror or exc)
        try:
            env = parse_env_file(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            # an error of this service alone: the others of the host work on
            return {}, "env_file %s is not UTF-8 text (byte 0x%02x at offset %d); save it as UTF-8" % (
                p, raw[exc.start], exc.start)
        for v in env.values():
            if len(v) >= 4:
                self.values.add(v)
        return env, None

    def load_spec(self, spec):
        """Remember the secrets a service spec refers to (its env_file values, its health header
        files), so text about it can be redacted even when nothing else read them in this request.
        Unreadable files are skipped here: the step that needs them reports the error."""
        if spec.get("env_file"):
            self.env_file(spec["env_file"])
        for path in ((spec.get("health") or {}).get("header_files") or {}).values():
            self.read_file(path)
        return self

    def redact(self, text):
        if not isinstance(text, str):
            return text
        for v in sorted(self.values, key=len, reverse=True):
            if v and v in text:
                text = text.replace(v, "***")
        return text

    def redact_obj(self, obj):
        """A copy of a JSON-like value with every string redacted (keys included)."""
        if not self.values:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact(k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        return obj


def redact_error(event, args):
    """An error event of the agent (its message and trace: an exception's text may quote what
    the op was working on) with every secret redacted: those this agent has read so far, and those
    of the services the failed request named (their env_file values, their health header files)."""
    host = args.get("host") if isinstance(args, dict) else None
    base = expand(host["path"]) if isinstance(host, dict) and isinstance(host.get("path"), str) else None
    secrets = Secrets(base)
    for spec in list((args or {}).get("services") or []) + list((args or {}).get("all_services") or []):
        if isinstance(spec, dict):
            try:
                secrets.load_spec(spec)
            except Exception:  # noqa: S112 (a bad spec is the op's error, reported already)
                continue
    secrets.values.update(SEEN)
    return secrets.redact_obj(event)
