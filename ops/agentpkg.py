"""Builds the on-host agent as one zipapp, named by the hash of its content.

The zip holds ``ops/agent/*.py`` (stdlib-only) and a ``__main__.py``; it is shipped once per version
to ``$XDG_CACHE_HOME/ops-agent/agent-<hash>.pyz`` on each host and run with the host's python3.

On the client the built zip is cached on disk by the hash of its sources (``local_cache_dir()``):
building it compiles every agent module (~40 ms); hashing the sources to find the cached copy reads
a dozen small files (~1 ms).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path

AGENT_DIR = Path(__file__).parent / "agent"
_EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = "from ops.agent import server\nserver.main(version={version!r})\n"
REMOTE_DIR = '"${XDG_CACHE_HOME:-$HOME/.cache}/ops-agent"'


@dataclass(frozen=True)
class AgentBundle:
    version: str
    data: bytes

    @property
    def filename(self) -> str:
        return f"agent-{self.version}.pyz"


def _sources(agent_dir: Path) -> list[tuple[str, bytes]]:
    files = [("ops/__init__.py", b"")]
    for p in sorted(agent_dir.glob("*.py")):
        files.append((f"ops/agent/{p.name}", p.read_bytes()))
    return files


class _BuiltOnce:
    """``bundle()``: the agent of this installation, built once per process, and once only even
    when many host threads ask at the same moment (functools.cache would let each of them build
    it: 30 hosts = 30 compiles of the agent, ~25 ms of CPU each; bench/RESULTS.md, case 5).
    ``bundle.cache_clear()`` forgets it (tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: AgentBundle | None = None

    def __call__(self) -> AgentBundle:
        with self._lock:
            if self._value is None:
                self._value = cached_build(AGENT_DIR)
            return self._value

    def cache_clear(self) -> None:
        with self._lock:
            self._value = None


bundle = _BuiltOnce()


def _pyc(name: str, source: bytes) -> bytes | None:
    """The module compiled by THIS interpreter, as an unchecked hash-based .pyc (PEP 552).

    Performance (bench/RESULTS.md, case 1): zipimport never writes bytecode caches, so without
    these every agent start re-compiles ~3000 lines of agent source on the host: ~100 ms of the
    agent's ~200 ms start-up here (far more on a Raspberry Pi). zipimport prefers ``x.pyc`` over
    ``x.py`` and skips a .pyc whose magic number is another Python version's (it falls back to
    the source), so a host whose python3 differs from ours is as before. The bytes depend only on
    the sources and this interpreter's bytecode version (its magic number), and so does the
    version (the file name on the host): the bundle stays deterministic.
    """
    import importlib._bootstrap_external as bootstrap  # the stdlib's own pyc writer (py_compile's)

    try:
        code = compile(source, name, "exec", dont_inherit=True)
    except SyntaxError:
        return None  # ship the source alone: the host reports the error as before
    return bytes(bootstrap._code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))


def _version(sources: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in sources:
        h.update(name.encode() + b"\0" + data + b"\0")
    h.update(importlib.util.MAGIC_NUMBER)  # the .pyc inside are this Python's (see _pyc)
    return h.hexdigest()[:16]


def local_cache_dir() -> Path:
    """Where this client keeps built agents: $OPS_CACHE_DIR, else $XDG_CACHE_HOME/ops, else ~/.cache/ops."""
    explicit = os.environ.get("OPS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ops"


def cached_build(agent_dir: Path) -> AgentBundle:
    """The agent built from ``agent_dir``: read from the local cache when a copy of this version is
    there and intact (its name carries the sha256 of its bytes, checked on every read), else built
    and stored (atomically: a temp file renamed into place; concurrent writers write equal bytes).
    A cache that cannot be read or written only costs the build."""
    version = _version(_sources(agent_dir))
    cache = local_cache_dir()
    prefix = f"agent-{version}."
    try:
        names = [n for n in os.listdir(cache) if n.startswith(prefix) and n.endswith(".pyz")]
    except OSError:
        names = []
    for name in names:
        digest = name[len(prefix):-len(".pyz")]
        try:
            data = (cache / name).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest()[:32] == digest:
            return AgentBundle(version=version, data=data)
        try:
            os.unlink(cache / name)  # damaged: build it again
        except OSError:
            pass
    b = build(agent_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cache / f".tmp.{os.getpid()}.{threading.get_ident()}"
        tmp.write_bytes(b.data)
        os.replace(tmp, cache / f"agent-{b.version}.{hashlib.sha256(b.data).hexdigest()[:32]}.pyz")
    except OSError:
        pass
    return b


def build(agent_dir: Path) -> AgentBundle:
    """Zip the agent sources in ``agent_dir`` (plus their .pyc for this interpreter, see _pyc);
    the same sources always give the same bytes."""
    import zipfile  # only when building (~10 ms of import): a cached agent does without

    sources = _sources(agent_dir)
    version = _version(sources)
    compiled = [(name + "c", pyc) for name, data in sources if (pyc := _pyc(name, data)) is not None]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*sources, ("__main__.py", MAIN.format(version=version).encode()), *compiled]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return AgentBundle(version=version, data=buf.getvalue())


NEED_AGENT = '{"event":"need-agent"}'


def run_command(python: str, b: AgentBundle, resolved: str | None = None) -> str:
    """The one shell command that starts the agent, or says it must be shipped first.

    ``-S``: the agent is stdlib only, so the interpreter skips ``site`` (its .pth files, user
    site-packages: ~25 ms of a ~45 ms start here). ``resolved``: the interpreter ``python``
    resolved to last time (ops/hostcache.py), exec'd directly when it is still executable."""
    f = f"{REMOTE_DIR}/{b.filename}"
    # the login shell's environment, for the agent to measure what `python` (a shim?) changes in
    # it (ops/agent/loginenv.py): the client replays that when it execs the resolved path
    login = "OPS_LOGIN_ENV=$(env -0 2>/dev/null | od -An -vtx1 | tr -d ' \\n')"
    run = f'{login} exec {shlex.quote(python)} -S "$f"'
    if resolved:
        q = shlex.quote(resolved)
        run = f'if [ -x {q} ]; then OPS_ENV_STDIN=1 exec {q} -S "$f"; fi; {run}'
    return f'f={f}; if [ -f "$f" ]; then {run}; else echo \'{NEED_AGENT}\'; fi'


def install_command(b: AgentBundle) -> str:
    """Reads the zipapp on stdin and installs it atomically (tmp file + rename)."""
    d = REMOTE_DIR
    return (
        f'd={d}; mkdir -p "$d" && chmod 700 "$d" && t="$d/.tmp.$$" && cat > "$t" && '
        f'mv -f "$t" "$d/{b.filename}"'
    )
