"""A task's handle on one host (transport + agent), and fan-out over many hosts.

Partial failure is normal: each host runs in its own thread with its own connection; an error on
one host becomes that host's outcome and never hides the others. Outcomes are keyed by inventory
host name (never by connection: several inventory hosts may share one machine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ops.agentclient import AGENT_START_TIMEOUT, AgentSession, EventHandler
from ops.errors import OpsError, TransportError
from ops.inventory import Host, Inventory, Service
from ops.transport import for_host

T = TypeVar("T")
MAX_PARALLEL = 256  # hosts worked on at once by on_hosts


class HostSession:
    def __init__(self, inventory: Inventory, host: Host) -> None:
        self.inventory = inventory
        self.host = host
        self.transport = for_host(host, inventory)
        self.agent = AgentSession(self.transport, host.python, host.name, host.command_timeout)
        # how long a mutating operation waits for another one to release the host (hostlock.py)
        self.lock_wait = 0.0

    def open(self) -> HostSession:
        from ops import persist  # the warm path: a connection and agent held since the last task

        held = persist.attach(self.inventory, self.host)
        if held is not None:
            self.transport = self.agent.transport = held
        self.transport.open()
        self.agent.start()
        return self

    def close(self) -> None:
        try:
            self.agent.close()
        finally:
            self.transport.close()
        if self.agent.hello and not getattr(self.transport, "held", False):
            from ops import persist

            persist.hand_over(self.inventory, self.host)  # no-op unless [ssh] persist is set

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        on_event: EventHandler | None = None,
        timeout: float | None = None,
        stream: str | None = None,
    ) -> Any:
        if stream is None:  # the plain signature (tests wrap AgentSession.call with it)
            return self.agent.call(op, args, on_event=on_event, timeout=timeout)
        return self.agent.call(op, args, on_event=on_event, timeout=timeout, stream=stream)

    def host_args(self) -> dict[str, Any]:
        args = {"name": self.host.name, "path": self.host.path, "state_dir": self.host.state_dir,
                "lock_wait": self.lock_wait}
        if self.host.releases:  # the deploy ops work in the releases root, not in current
            args.update(layout="releases", root=self.host.root, shared=list(self.host.shared),
                        keep=self.host.keep)
        return args

    def service_args(self, services: list[Service]) -> dict[str, Any]:
        return {
            "host": self.host_args(),
            "services": [s.to_agent() for s in services],
            "all_services": [s.to_agent() for s in self.host.services],
        }


# Sessions a task began to open early (open_early), by host name, with the inventory they were
# opened for: adopted by connect() for that same inventory object only, or closed by drop_early().
_EARLY: dict[str, tuple[Inventory, Future[HostSession]]] = {}
_EARLY_LOCK = threading.Lock()


def open_early(inventory: Inventory, hosts: list[Host]) -> None:
    """Begin opening these hosts' sessions now, each in a background thread, so that the SSH
    handshake and the agent's start on the host (~100 ms on loopback, more over a real link) run
    while this process goes on importing and preparing the task. ``connect`` adopts the session,
    or raises exactly the error its opening raised: a session is the same whether it was opened
    early or late. A task that ends without adopting one (a usage error found later, an empty
    plan) closes it with ``drop_early``. At most MAX_PARALLEL hosts, the first ones: on_hosts
    works on no more at once."""
    for host in hosts[:MAX_PARALLEL]:
        with _EARLY_LOCK:
            if host.name in _EARLY:
                continue
            future: Future[HostSession] = Future()
            _EARLY[host.name] = (inventory, future)

        def run(host: Host = host, future: Future[HostSession] = future) -> None:
            session = HostSession(inventory, host)
            try:
                session.open()
            except BaseException as exc:  # the error connect() raises, as a late open would
                try:
                    session.close()
                finally:
                    future.set_exception(exc)
                return
            future.set_result(session)

        threading.Thread(target=run, name=f"open-early-{host.name}", daemon=True).start()


def open_bound(host: Host) -> float:
    """The longest an opening can take by its own timeouts (connect, three agent starts, shipping
    the agent once), with room to spare: what waiting for an early opening is bounded by."""
    return host.connect_timeout + 3 * AGENT_START_TIMEOUT + host.command_timeout + 30.0


def _adopt(inventory: Inventory, host: Host) -> HostSession | None:
    with _EARLY_LOCK:
        entry = _EARLY.get(host.name)
        if entry is None or entry[0] is not inventory:
            return None
        del _EARLY[host.name]
    future = entry[1]
    try:
        return future.result(timeout=open_bound(host))
    except FutureTimeout:
        future.add_done_callback(_close_unadopted)
        raise TransportError(host.name, f"opening the session did not end within {open_bound(host):.0f}s",
                             "this is a bug in the tool; please report it") from None


def drop_early() -> None:
    """Close the early-opened sessions nobody adopted: now if open, else once their opening ends
    (never waited for: a task that failed on its own must not wait on a slow host to say so)."""
    with _EARLY_LOCK:
        entries = list(_EARLY.values())
        _EARLY.clear()
    for _, future in entries:
        future.add_done_callback(_close_unadopted)


def _close_unadopted(future: Future[HostSession]) -> None:
    if future.exception() is None:  # a failed opening closed its session already
        future.result().close()


@contextmanager
def connect(inventory: Inventory, host: Host) -> Iterator[HostSession]:
    early = _adopt(inventory, host)
    session = early or HostSession(inventory, host)
    try:
        if early is None:
            session.open()
        yield session
    finally:
        session.close()


@dataclass
class HostOutcome(Generic[T]):
    host: str
    value: T | None = None
    error: OpsError | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def on_hosts(
    inventory: Inventory,
    hosts: list[Host],
    fn: Callable[[HostSession], T],
    max_workers: int | None = None,
) -> list[HostOutcome[T]]:
    """Run fn(session) on every host in parallel; one outcome per host, in the given order."""

    def one(host: Host) -> HostOutcome[T]:
        t = time.monotonic()
        try:
            with connect(inventory, host) as session:
                value = fn(session)
            return HostOutcome(host.name, value=value, duration=time.monotonic() - t)
        except OpsError as exc:
            return HostOutcome(host.name, error=exc, duration=time.monotonic() - t)
        except Exception as exc:  # a bug must not hide the other hosts' outcomes
            err = OpsError(
                f"{host.name}: unexpected {type(exc).__name__}: {exc}",
                "this is a bug in the tool; please report it",
            )
            return HostOutcome(host.name, error=err, duration=time.monotonic() - t)

    if len(hosts) == 1:
        return [one(hosts[0])]
    # one thread per host (up to MAX_PARALLEL): each mostly waits on its host, and a cap of 32
    # ran 60 hosts in two waves, doubling the wall time (bench/RESULTS.md, fan-out)
    workers = max_workers or min(MAX_PARALLEL, len(hosts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, hosts))
