"""A real systemd, booted as PID 1 of fresh namespaces, reached over SSH like a real box.

systemd 252 is installed on the test machines but is not their PID 1. ``SystemdBox`` boots it
inside a throwaway container:

* a *keeper* process (``sleep``) holds a private mount, network and UTS namespace. In its mount
  namespace a private tmpfs holds the overlay's upper and work layers; the seed (sshd config and
  keys, the boot target, sudo extracted from its .deb) is copied into the upper layer once. The
  keeper's network namespace gets one end of a veth pair (addresses in 10.231.0.0/16, a /30 per
  box: traffic goes only to that namespace). Because the keeper outlives each boot, the box can
  be REBOOTED with its disk (the upper layer) and its address intact;
* each boot enters the keeper's namespaces, moves into a fresh cgroup v2 directory, unshares
  pid, mount, cgroup and ipc namespaces, mounts an overlay of ``/`` (lower, read-only) with the
  private upper layer, mounts proc, sysfs, a cgroup2 hierarchy, a minimal /dev (device nodes and
  a new devpts instance) and /run, pivots into it and execs ``/lib/systemd/systemd`` as PID 1 of
  the new pid namespace, asked for ``ops-test.target`` (basic.target + logind + an sshd).

systemd is NEVER booted on the machine's real root: its boot-time ``systemd-tmpfiles --remove``
would empty the real /tmp. Here it only ever sees the overlay, whose writes (and whiteouts) land in
the private tmpfs.

Tear-down: SIGKILL the container's PID 1 (the kernel kills its whole pid namespace), then the
keeper (its mount namespace, with the tmpfs and every mount, and its network namespace, with the
veth, go with it), then remove the cgroup directories.

Users inside: ``root``; ``opsuser`` (no sudo right, lingering, so its ``systemd --user`` runs);
``opsadmin`` (``sudo`` without a password, when the sudo package could be fetched). SSH host
aliases in ``ssh_config_path``: ``sdbox`` (root), ``sdbox-user`` and ``sdbox-admin``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import SSHD, _keygen, pid_alive, port_open, read_text, wait_until

SYSTEMD = "/lib/systemd/systemd"
SUDO_CACHE = Path(os.environ.get("OPS_TEST_CACHE", Path.home() / ".cache" / "ops-tests"))

# Runs as PID 1 of the new pid namespace, in a fresh mount namespace copied from the keeper's.
_BOOT_SCRIPT = r"""
set -eu
D=$1
R=$D/root
mount --make-rprivate /
mkdir -p $R
mount -t overlay overlay -o lowerdir=/,upperdir=$D/upper,workdir=$D/work $R
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t tmpfs -o mode=755,size=64m dev $R/dev
for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${spec%%:*}; rest=${spec#*:}
  mknod -m 666 $R/dev/$name c ${rest%%:*} ${rest#*:}
done
mkdir $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $R/dev/pts
ln -s pts/ptmx $R/dev/ptmx
ln -s /proc/self/fd $R/dev/fd
ln -s /proc/self/fd/0 $R/dev/stdin
ln -s /proc/self/fd/1 $R/dev/stdout
ln -s /proc/self/fd/2 $R/dev/stderr
mount -t tmpfs -o mode=755,size=128m run $R/run
chroot $R /bin/sh /etc/ops-test/firstboot.sh
cd $R
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
exec env -i container=ops-test /lib/systemd/systemd --unit=ops-test.target
"""

# Runs chrooted in the overlay before systemd starts (idempotent: runs at every boot).
_FIRSTBOOT = r"""
set -eu
echo ops-systemd > /etc/hostname
grep -q ' ops-systemd$' /etc/hosts || printf '127.0.1.1 ops-systemd\n' >> /etc/hosts
for u in opsuser opsadmin; do
  id -u $u >/dev/null 2>&1 || useradd -m -s /bin/bash -p '*' $u
done
# sshd without PAM refuses a locked account ('!' password), even by key.
case "$(getent shadow root | cut -d: -f2)" in '!'*) usermod -p '*' root ;; esac
mkdir -p /var/lib/systemd/linger
touch /var/lib/systemd/linger/opsuser
if [ -x /usr/bin/sudo ]; then
  printf 'opsadmin ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/opsadmin
  chmod 440 /etc/sudoers.d/opsadmin
fi
"""

_TARGET = """\
[Unit]
Description=ops test box
Requires=basic.target
After=basic.target
Wants=ops-test-sshd.service systemd-logind.service systemd-user-sessions.service multi-user.target
AllowIsolate=yes
"""

_SSHD_UNIT = """\
[Unit]
Description=sshd for the ops tests
After=network.target
[Service]
ExecStart=/usr/sbin/sshd -D -e -f /etc/ops-test/sshd_config
RuntimeDirectory=sshd
RuntimeDirectoryPreserve=yes
Restart=always
RestartSec=0.2
[Install]
WantedBy=ops-test.target
"""

_SSHD_CONFIG = """\
ListenAddress 0.0.0.0
Port 22
HostKey /etc/ops-test/host_key
AuthorizedKeysFile /etc/ops-test/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 100
MaxStartups 200
LogLevel VERBOSE
"""


def _cgroup2_root() -> Path | None:
    """Where this machine mounts its cgroup v2 hierarchy (unified or hybrid), or None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _own_cgroup2() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def systemd_box_unavailable() -> str | None:
    """None if a systemd box can be booted here, else a sentence saying why not."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root (unshare, mount, veth)"
    for tool, path in (
        ("systemd", SYSTEMD),
        ("sshd", SSHD),
        ("unshare", shutil.which("unshare")),
        ("nsenter", shutil.which("nsenter")),
        ("ip", shutil.which("ip")),
        ("ssh-keygen", shutil.which("ssh-keygen")),
    ):
        if not path or not os.access(path, os.X_OK):
            return f"{tool} is not installed (apt-get install systemd openssh-server iproute2 util-linux)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (modprobe overlay)"
    if _cgroup2_root() is None:
        return "no cgroup v2 hierarchy is mounted on this machine (systemd 252 needs one)"
    return None


def _sudo_deb() -> Path | None:
    """The sudo .deb (fetched once with apt-get download into the test cache), or None."""
    SUDO_CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(SUDO_CACHE.glob("sudo_*.deb"))
    if found:
        return found[-1]
    if not shutil.which("apt-get"):
        return None
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            ["apt-get", "download", "-q", "sudo"],
            cwd=SUDO_CACHE,
            capture_output=True,
            timeout=120,
            check=False,
        )
    found = sorted(SUDO_CACHE.glob("sudo_*.deb"))
    return found[-1] if found else None


class SystemdBox:
    """One booted systemd container. ``boot()``, ``reboot()``, ``close()``; ``run(argv)`` runs a
    command inside (nsenter into all its namespaces); SSH aliases in ``ssh_config_path``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid() % 100000:05d}{random.randrange(16**3):03x}"
        self.tag = tag
        self.mnt = self.workdir / "mnt"  # the keeper's private tmpfs (empty on the host)
        self.seed = self.workdir / "seed"
        self.key_path = self.workdir / "id_ed25519"
        self.ssh_config_path = self.workdir / "ssh_config"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.log_path = self.workdir / "boot.log"
        self.veth = f"opsv{tag}"[:15]
        self.host_addr, self.addr = self._pick_subnet()
        cg2 = _cgroup2_root()
        assert cg2 is not None
        self.cgroup_base = cg2 / _own_cgroup2().lstrip("/") / f"ops-sdbox-{tag}"
        self.keeper: subprocess.Popen[bytes] | None = None
        self.launcher: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self.boots = 0
        self.has_sudo = False

    # ---- setup

    @staticmethod
    def _pick_subnet() -> tuple[str, str]:
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
        for _ in range(200):
            third, fourth = random.randrange(256), random.randrange(64) * 4
            host, box = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
            if f" {host}/" not in used and f" {box}/" not in used:
                return host, box
        raise RuntimeError("no free /30 in 10.231.0.0/16 for the systemd box")

    def _write_seed(self) -> None:
        etc = self.seed / "etc"
        (etc / "systemd" / "system" / "ops-test.target.wants").mkdir(parents=True, exist_ok=True)
        (etc / "systemd" / "system" / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        (etc / "ops-test").mkdir(parents=True, exist_ok=True)
        (etc / "systemd" / "system" / "ops-test.target").write_text(_TARGET)
        (etc / "systemd" / "system" / "ops-test-sshd.service").write_text(_SSHD_UNIT)
        (etc / "ops-test" / "sshd_config").write_text(_SSHD_CONFIG)
        (etc / "ops-test" / "firstboot.sh").write_text(_FIRSTBOOT)
        # root's home is the machine's /root seen through the overlay: its rc files (pyenv init,
        # whose `rehash` lock can wait 60 s on a lock file another process left behind on the
        # machine) must not run in the box: plain ones hide them
        root_home = self.seed / "root"
        root_home.mkdir(mode=0o700, exist_ok=True)
        for rc in (".bashrc", ".profile", ".bash_profile", ".bash_login"):
            (root_home / rc).write_text("# the ops test box: no rc of the machine's root\n")
        _keygen(etc / "ops-test" / "host_key", "sdbox-host")
        _keygen(self.key_path, "sdbox-client")
        pub = self.key_path.with_name(self.key_path.name + ".pub").read_text()
        (etc / "ops-test" / "authorized_keys").write_text(pub)
        if os.access("/usr/bin/sudo", os.X_OK):  # the box sees the machine's through the overlay
            self.has_sudo = True
        else:
            deb = _sudo_deb()
            if deb is not None:
                self.has_sudo = self._extract_deb(deb)
        self.known_hosts_path.write_text("")
        entries = []
        for alias, user in (("sdbox", "root"), ("sdbox-user", "opsuser"), ("sdbox-admin", "opsadmin")):
            entries += [
                f"Host {alias}",
                f"    HostName {self.addr}",
                "    Port 22",
                f"    User {user}",
                f"    IdentityFile {self.key_path}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {self.known_hosts_path}",
                "    StrictHostKeyChecking accept-new",
                "",
            ]
        self.ssh_config_path.write_text("\n".join(entries))

    def _extract_deb(self, deb: Path) -> bool:
        """Unpack a .deb into the seed. A top-level directory that is a symlink on the real root
        (usrmerge: /lib -> usr/lib) is merged into its target: as a directory in the upper layer
        it would hide the symlink and with it every library."""
        staging = self.workdir / "deb"
        shutil.rmtree(staging, ignore_errors=True)
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], capture_output=True)
        if done.returncode != 0:
            return False
        for entry in sorted(staging.iterdir()):
            real = Path("/") / entry.name
            target = self.seed / (os.readlink(real) if real.is_symlink() else entry.name)
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", f"{entry}/.", str(target)], check=True)
        shutil.rmtree(staging, ignore_errors=True)
        return True

    def _start_keeper(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        script = (
            'set -e; mount -t tmpfs -o mode=755,size=1g ops-sdbox "$1"; '
            'mkdir "$1/upper" "$1/work"; cp -a "$2/." "$1/upper/"; '
            # the machine's own enabled services (its sshd on :22, a database...) stay out of the
            # box: an opaque, empty multi-user.target.wants hides /etc's; units enabled in the box
            # (WantedBy=multi-user.target) land in it and come back at every boot
            "\"$3\" -c \"import os,sys; os.setxattr(sys.argv[1], 'trusted.overlay.opaque', b'y')\" "
            '"$1/upper/etc/systemd/system/multi-user.target.wants"; '
            # the keeper names its owner (this test process: pid and start time), its cgroups and
            # its veth, so a later run can reap a box whose owner was killed before its teardown
            'echo ready; exec "$3" -c "import time\nwhile True: time.sleep(3600)" '
            'ops-sdbox-keeper "$4" "$5" "$6"'
        )
        self.keeper = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "keeper",
                str(self.mnt),
                str(self.seed),
                sys.executable,
                _owner_mark(os.getpid()),
                str(self.cgroup_base),
                self.veth,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115 - the child keeps it
            start_new_session=True,
        )
        assert self.keeper.stdout is not None
        line = self.keeper.stdout.readline()  # bounded: the script either prints or exits
        if line.strip() != b"ready":
            raise RuntimeError(f"the box's keeper failed: {read_text(self.log_path)[-2000:]}")
        kpid = self.keeper.pid
        subprocess.run(
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", str(kpid)],
            check=True,
            capture_output=True,
        )
        subprocess.run(["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.veth], check=True)
        subprocess.run(["ip", "link", "set", self.veth, "up"], check=True)
        inside = f"ip addr add {self.addr}/30 dev eth0 && ip link set eth0 up && ip link set lo up"
        subprocess.run(["nsenter", "-t", str(kpid), "-n", "sh", "-c", inside], check=True)

    def _boot_once(self, timeout: float) -> None:
        assert self.keeper is not None
        self.boots += 1
        cgroup = self.cgroup_base / f"boot{self.boots}"
        cgroup.mkdir(parents=True)
        script_path = self.workdir / "boot.sh"
        script_path.write_text(_BOOT_SCRIPT)
        launch = (
            'echo $$ > "$1/cgroup.procs" && exec nsenter -t "$2" -m -n -u -i '
            'unshare --fork --pid --mount --cgroup --ipc --propagation private sh "$3" "$4"'
        )
        with open(self.log_path, "ab") as log:
            self.launcher = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    launch,
                    "launch",
                    str(cgroup),
                    str(self.keeper.pid),
                    str(script_path),
                    str(self.mnt),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        launcher = self.launcher

        def pid1() -> int:
            if launcher.poll() is not None:
                raise RuntimeError(
                    f"the box's boot exited with {launcher.returncode}:\n{read_text(self.log_path)[-3000:]}"
                )
            try:
                kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
            except OSError:
                return 0
            if not kids:
                return 0
            try:
                comm = Path(f"/proc/{kids[0]}/comm").read_text().strip()
            except OSError:
                return 0
            return int(kids[0]) if comm == "systemd" else 0

        self.pid1 = wait_until(pid1, timeout, interval=0.05, message="systemd to become PID 1 of the box")
        deadline = time.monotonic() + timeout
        state = self._wait_running(deadline)
        if state not in ("running", "degraded"):
            raise RuntimeError(f"the box's systemd did not finish booting: {state!r}")
        wait_until(
            lambda: port_open(22, self.addr, timeout=0.5),
            max(1.0, deadline - time.monotonic()),
            interval=0.05,
            message=f"sshd in the box on {self.addr}:22",
        )

    def _wait_running(self, deadline: float) -> str:
        last = ""
        while time.monotonic() < deadline:
            done = self.run(
                ["systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            last = done.stdout.strip()
            if last in ("running", "degraded"):
                return last
            time.sleep(0.1)
        return last

    # ---- public

    def boot(self, timeout: float = 90.0) -> SystemdBox:
        """Write the seed, start the keeper and boot systemd; wait until it runs and sshd answers."""
        reap_stale_boxes()
        try:
            self._write_seed()
            self._start_keeper()
            self._boot_once(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the box (all its namespaces, its root) as root."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
        )

    def shutdown(self, timeout: float = 30.0, *, clean: bool = True) -> None:
        """Stop the box's systemd (``systemctl poweroff``, or SIGKILL of PID 1 when not clean:
        a power cut). The disk (overlay upper layer) and the address stay for ``start()``."""
        launcher, self.launcher = self.launcher, None
        if launcher is None:
            return
        if clean and pid_alive(self.pid1):
            with contextlib.suppress(subprocess.SubprocessError):
                self.run(["systemctl", "--no-block", "poweroff"], check=False, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(timeout=timeout)
        if launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                launcher.wait(timeout=timeout)
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait(timeout=timeout)
        self._remove_cgroups(timeout)

    def start(self, timeout: float = 90.0) -> None:
        """Boot again on the same disk (after ``shutdown``)."""
        self._boot_once(timeout)

    def reboot(self, timeout: float = 90.0, *, clean: bool = True) -> None:
        """Shut the box down (cleanly, or by killing PID 1) and boot it again on the same disk."""
        self.shutdown(timeout, clean=clean)
        self.known_hosts_path.write_text(self.known_hosts_path.read_text())
        self._boot_once(timeout)

    def _remove_cgroups(self, timeout: float) -> None:
        def gone() -> bool:
            if not self.cgroup_base.exists():
                return True
            for dirpath, _dirs, _files in sorted(os.walk(self.cgroup_base), key=lambda w: -len(w[0])):
                if dirpath == str(self.cgroup_base):
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
            return len(list(os.walk(self.cgroup_base))) == 1

        with contextlib.suppress(TimeoutError):
            wait_until(gone, timeout, interval=0.05, message="the box's cgroups to empty")

    def close(self) -> None:
        """Kill PID 1 (its pid namespace dies with it) and the keeper (mounts and veth go)."""
        with contextlib.suppress(Exception):
            self.shutdown(10.0, clean=False)
        keeper, self.keeper = self.keeper, None
        if keeper is not None and keeper.poll() is None:
            keeper.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                keeper.wait(timeout=10)
        if keeper is not None and keeper.stdout is not None:
            keeper.stdout.close()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
        self._remove_cgroups(10.0)
        with contextlib.suppress(OSError):
            self.cgroup_base.rmdir()
        with contextlib.suppress(OSError):
            self.mnt.rmdir()

    def put(self, src: Path, dest: str, owner: str = "root") -> None:
        """Copy a local directory into the box (tar through nsenter: the box may not see it)."""
        self.run(["mkdir", "-p", dest])
        pack = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(self.pid1),
                    "-a",
                    "--",
                    "tar",
                    "-C",
                    dest,
                    "-xf",
                    "-",
                    "--no-same-owner",
                ],
                stdin=pack.stdout,
                check=True,
                capture_output=True,
                timeout=60,
            )
        finally:
            assert pack.stdout is not None
            pack.stdout.close()
            pack.wait(timeout=60)
        self.run(["chown", "-R", owner, dest])

    def write(self, path: str, text: str, mode: str = "644") -> None:
        """Write a file in the box (as root)."""
        self.run(
            ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "w", path, mode],
            input=text,
        )

    def ssh(
        self, alias: str, command: str, *, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the box over SSH with the system client (as ``alias``'s user)."""
        return subprocess.run(
            [
                "ssh",
                "-F",
                str(self.ssh_config_path),
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                alias,
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def __repr__(self) -> str:
        return f"SystemdBox(pid1={self.pid1}, addr={self.addr}, boots={self.boots})"


def _owner_mark(pid: int) -> str:
    """pid:starttime of a process (the start time tells a reused pid apart), or "" if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid}:{raw[raw.rindex(')') + 2 :].split()[19]}"


def reap_stale_boxes() -> list[int]:
    """Tear down boxes whose owner died without its teardown (a killed test run): kill every
    process of their cgroups (PID 1 first: its pid namespace goes with it), then the keeper
    (mounts and network namespace go with it); remove the cgroups and the veth. Returns the
    keepers' pids. A box whose owner still runs is left alone."""
    reaped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ops-sdbox-keeper" not in argv:
            continue
        rest = [a.decode(errors="replace") for a in argv[argv.index(b"ops-sdbox-keeper") + 1 :]]
        if len(rest) < 3:
            continue
        owner, cgroup_base, veth = rest[0], Path(rest[1]), rest[2]
        if owner and owner.split(":")[0].isdigit() and _owner_mark(int(owner.split(":")[0])) == owner:
            continue  # its test run is alive
        for dirpath, _dirs, files in os.walk(cgroup_base):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    for pid in Path(dirpath, "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry), signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda e=int(entry): not pid_alive(e), 10, message="a stale keeper to die")
        box = SystemdBox.__new__(SystemdBox)
        box.cgroup_base = cgroup_base
        box._remove_cgroups(10.0)
        with contextlib.suppress(OSError):
            cgroup_base.rmdir()
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        reaped.append(int(entry))
    return reaped


def boot_box(workdir: Path, timeout: float = 90.0) -> SystemdBox:
    """A booted ``SystemdBox`` in ``workdir``; call ``.close()``."""
    return SystemdBox(workdir).boot(timeout)


__all__ = ["SystemdBox", "boot_box", "reap_stale_boxes", "systemd_box_unavailable"]
