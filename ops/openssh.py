"""OpenSSH as a transport (``[ssh] transport = "openssh"``): the agent runs over the system ``ssh``
binary, one exec channel, its stdin/stdout.

That brings every ssh_config feature paramiko lacks (Match blocks, IdentityAgent such as a desktop
password manager's agent, certificates, FIDO keys, GSSAPI) and OpenSSH's own multiplexing
(ControlMaster/ControlPersist in ssh_config). The policy is the paramiko transport's: host keys are
``accept-new`` (an unknown key is recorded, a changed one refused) in the same known_hosts file
(``[ssh] known_hosts``, else the ssh_config's), ``BatchMode`` (never a prompt), the connect timeout
for the TCP connect and the SSH banner, keepalives every 15 s; and ssh's failures (exit 255 before
the agent said anything) become the same errors with the same messages (``ssh_error``).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from typing import TYPE_CHECKING

from ops.errors import HostKeyChanged, TransportError, Unreachable
from ops.transport import Channel, LocalChannel

if TYPE_CHECKING:
    from ops.inventory import Host, Inventory

SSH = "ssh"
KEY_TYPES = {"ED25519": "ssh-ed25519", "RSA": "ssh-rsa", "DSA": "ssh-dss"}


def destination(ssh: str) -> str:
    """hosts.toml's ``ssh`` for the ssh binary: an alias or user@host as is; ``user@host:port``
    (which ssh does not read) as an ssh:// URI."""
    if ":" in ssh and "://" not in ssh and not ssh.startswith("["):
        return "ssh://" + ssh
    return ssh


def argv(host: Host, inventory: Inventory, command: str) -> list[str]:
    """The ssh command line that runs ``command`` on the host (pure: tests compare it exactly)."""
    assert host.ssh is not None
    timeout = max(1, math.ceil(host.connect_timeout))
    out = [SSH]
    config = inventory.ssh_config or os.environ.get("OPS_SSH_CONFIG")
    if config:
        out += ["-F", config]
    out += ["-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3"]
    if inventory.known_hosts:
        out += ["-o", f"UserKnownHostsFile={inventory.known_hosts}"]
    return [*out, "--", destination(host.ssh), command]


def resolved(host: Host, inventory: Inventory) -> dict[str, str]:
    """What ssh_config makes of the host (``ssh -G``): user, hostname, port, known hosts, jump."""
    assert host.ssh is not None
    cmd = argv(host, inventory, "true")[:-3]  # without "--", the destination and the command
    try:
        r = subprocess.run([*cmd, "-G", "--", destination(host.ssh)], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    facts = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        facts.setdefault(key, value)
    return facts


def ssh_error(host: Host, inventory: Inventory, stderr: str, timeout: int) -> TransportError:
    """ssh's failure (exit 255) -> the error the paramiko transport raises for the same failure."""
    g = resolved(host, inventory)
    target = f"{g.get('user', '?')}@{g.get('hostname', host.ssh)}:{g.get('port', '22')}"
    jump = g.get("proxyjump")
    if jump and jump != "none":
        target += f" (via ProxyJump {jump})"
    text = stderr.strip()
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        kh = inventory.known_hosts or (g.get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0]
        m = re.search(r"The fingerprint for the (\S+) key sent by the remote host is\s+(\S+?)\.?\s*$",
                      text, re.MULTILINE)
        got = f"got {_key_name(m.group(1))} {m.group(2)}, " if m else ""
        return HostKeyChanged(
            host.name,
            f"host key for {g.get('hostname', host.ssh)} has CHANGED ({got}known_hosts "
            f"{os.path.expanduser(kh)} has another); refusing to connect to {target}",
        )
    if "Permission denied" in text or "Too many authentication failures" in text:
        return Unreachable(host.name, f"authentication to {target} failed: {_last_line(text)}",
                           "check IdentityFile/User for this host in ~/.ssh/config")
    if "banner exchange" in text:
        return Unreachable(
            host.name,
            f"{target} accepted the TCP connection but did not complete the SSH handshake within {timeout}s",
            "is an SSH server answering on that port? check HostName/Port in your ssh_config",
        )
    if "timed out" in text:
        return Unreachable(host.name, f"connect to {target} timed out after {timeout}s")
    reason = _last_line(text).rpartition(": ")[2] or "ssh failed (exit 255)"
    if reason == "Connection refused":  # in the paramiko transport's words (the same message)
        reason = f"Unable to connect to port {g.get('port', '22')} on {g.get('hostname', host.ssh)}"
    return Unreachable(host.name, f"cannot connect to {target}: {reason}")


def _key_name(kind: str) -> str:
    if kind.startswith("ECDSA"):
        return "ecdsa-sha2-nistp256"
    return KEY_TYPES.get(kind, kind.lower())


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


class OpenSSHChannel(LocalChannel):
    """The ssh process's pipes; an ssh failure before any output is raised as ``ssh_error``."""

    def __init__(self, transport: OpenSSHTransport, command: str) -> None:  # noqa: D107
        self.transport = transport
        self._said_anything = False
        host = transport.host
        self._buf = b""
        self._eof = False
        self.host = host.name
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            self.proc = subprocess.Popen(
                argv(host, transport.inventory, command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                start_new_session=True,  # Ctrl-C in the terminal does not reach it, as with paramiko
            )
        except OSError as exc:
            self._err.close()
            raise Unreachable(host.name, f"cannot run {SSH}: {exc}",
                              "install the OpenSSH client, or set [ssh] transport = \"paramiko\"") from None

    def read_line(self, deadline: float | None) -> bytes | None:
        line = super().read_line(deadline)
        if line is not None:
            self._said_anything = True
            return line
        if not self._said_anything and self.exit_status(5.0) == 255:
            host = self.transport.host
            raise ssh_error(host, self.transport.inventory, self.stderr_text(),
                            max(1, math.ceil(host.connect_timeout)))
        return None


class OpenSSHTransport:
    """Every channel is one ``ssh`` process (multiplexed by OpenSSH itself when ssh_config says so)."""

    def __init__(self, host: Host, inventory: Inventory) -> None:
        self.host = host
        self.inventory = inventory

    def open(self) -> None:
        return None

    def channel(self, command: str) -> Channel:
        return OpenSSHChannel(self, command)

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"openssh {self.host.ssh}"
