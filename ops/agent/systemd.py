"""Services that systemd runs (``manager = "systemd"``, or ``persist``ed by the tool), on the host.

Same promises as the tool's own lifecycle, with systemd's evidence instead of a state file:

* identity is the unit's current invocation: ``systemctl show`` gives MainPID, InvocationID and
  ExecMainStartTimestampMonotonic; a start counts only if it produced a NEW InvocationID;
* ownership is the unit's cgroup (ControlGroup -> cgroup.procs, recursively): exact, no pattern
  needed. A process matching the service's pattern OUTSIDE the cgroup is an orphan: it is reported,
  never signalled (it is not provably the unit's);
* gates are the same as for any service: the log gate reads the unit's journal after a cursor
  taken before the start (``journalctl _SYSTEMD_UNIT=UNIT --after-cursor C``: the unit's own
  processes, not systemd's "Started ..." line), or the service's ``log`` file when it declares one;
  the port must be held by a process of the cgroup; health is the same HTTP check;
* every systemctl/journalctl call is bounded by a timeout; a system unit driven by a user that is
  not root goes through ``sudo -n`` (never a password prompt: a missing right is a clear error).

Pure parts (argv builders, ``parse_show``, ``state_of``, ``render_unit``, ``crontab_line``) are
tested by exact output; ``Units`` executes. Stdlib only, python3.8+.
"""

import os
import re
import select
import shlex
import signal
import subprocess
import time

from . import ownership, procs
from .gates import (
    LogWatch,
    child_gate,
    describe_pids,
    health_checks,
    health_label,
    http_check,
    port_gate,
    run_health_checks,
)
from .state import expand

CMD_TIMEOUT = 30.0  # s for one systemctl/journalctl call that should answer at once
POLL = 0.05
SETTLE = 1.0  # a unit without gates must stay active this long to count as started
LOG_TAIL = 20
NEVER_MATCHES = "(?!)"  # the pattern of a unit that declares neither cmd nor match (ops/inventory.py)
MARKER = "# Written by ops (inv persist) from the inventory; edits are overwritten."
SHOW_PROPS = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "ExecMainStartTimestampMonotonic",
    "ExecMainCode",
    "ExecMainStatus",
    "InvocationID",
    "NRestarts",
    "ControlGroup",
    "UnitFileState",
    "Restart",
    "RestartUSec",
    "InactiveEnterTimestampMonotonic",
    "FragmentPath",
)
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
# ExecMainCode is a siginfo code: how the main process ended
_EXIT_CODES = {1: "exited", 2: "killed", 3: "dumped core"}


class UnitError(Exception):
    """A systemctl/journalctl call failed in a way the user must act on (message says how)."""


# --------------------------------------------------------------------------- pure helpers


def unit_of(spec):
    return spec.get("unit") or spec["name"] + ".service"


def is_unit(spec):
    return spec.get("manager") == "systemd" or bool(spec.get("persist"))


def needs_sudo(scope, euid):
    """A system unit is changed through ``sudo -n`` unless we are root; a user unit never."""
    return scope != "user" and euid != 0


def systemctl_argv(scope, args, sudo=False):
    argv = ["systemctl"] + (["--user"] if scope == "user" else []) + ["--no-ask-password"] + list(args)
    return (["sudo", "-n"] if sudo else []) + argv


def journalctl_argv(scope, unit, args, sudo=False):
    """journalctl for the lines the unit's own processes wrote (not systemd's lines about it)."""
    field = "_SYSTEMD_USER_UNIT" if scope == "user" else "_SYSTEMD_UNIT"
    argv = ["journalctl"] + (["--user"] if scope == "user" else []) + ["--no-pager", "-q"]
    argv += list(args) + ["%s=%s" % (field, unit)]
    return (["sudo", "-n"] if sudo else []) + argv


def cursor_argv(scope, sudo=False):
    """journalctl printing only the cursor of the journal's current end ("-- cursor: ...")."""
    argv = (
        ["journalctl"]
        + (["--user"] if scope == "user" else [])
        + ["--no-pager", "-q", "-n", "0", "--show-cursor"]
    )
    return (["sudo", "-n"] if sudo else []) + argv


def parse_cursor(text):
    for line in text.splitlines():
        if line.startswith("-- cursor: "):
            return line[len("-- cursor: ") :].strip()
    return None


def parse_show(text):
    """``systemctl show -p A -p B`` output -> {A: value}; numbers stay strings."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def exit_text(props):
    """How the main process last ended, in words ("exit code 3", "killed by signal 9")."""
    code, status = _int(props.get("ExecMainCode")), _int(props.get("ExecMainStatus"))
    if code == 1:
        return "exit code %d" % status
    if code in (2, 3):
        try:
            name = signal.Signals(status).name
        except ValueError:
            name = str(status)
        return "%s by %s" % ("killed" if code == 2 else "dumped core on", name)
    return "exit code %d" % status if status else ""


def state_of(props, stopped_by_user=False, now_mono=None):
    """systemd's states mapped onto the tool's: running / backoff / fatal / stopped / starting /
    stopping / unknown, with a detail sentence. Pure (now_mono: CLOCK_MONOTONIC in s)."""
    load, active, sub = props.get("LoadState"), props.get("ActiveState"), props.get("SubState")
    restarts = _int(props.get("NRestarts"))
    result = props.get("Result") or ""
    ended = exit_text(props)
    out = {
        "state": "unknown",
        "detail": "",
        "restarts": restarts,
        "result": result,
        "last_exit": _int(props.get("ExecMainStatus")) if props.get("ExecMainCode") else None,
    }
    if load == "not-found":
        out["detail"] = "unit %s is not installed on this host" % props.get("Id", "?")
        return out
    if load not in (None, "loaded"):
        out["detail"] = "unit %s: LoadState=%s" % (props.get("Id", "?"), load)
        return out
    if active in ("active", "reloading"):
        out["state"] = "running"
        if sub not in ("running", None):
            out["detail"] = "active (%s)" % sub
    elif active == "activating" and sub == "auto-restart":
        out["state"] = "backoff"
        wait = ""
        if now_mono is not None and props.get("InactiveEnterTimestampMonotonic"):
            due = (_int(props["InactiveEnterTimestampMonotonic"]) + _int(props.get("RestartUSec"))) / 1e6
            wait = "next try in %.1fs; " % max(0.0, due - now_mono)
        out["detail"] = "%srestarts %d, last: %s%s" % (wait, restarts, result, ", " + ended if ended else "")
    elif active == "activating":
        out["state"] = "starting"
        out["detail"] = "activating (%s)" % sub
    elif active == "deactivating":
        out["state"] = "stopping"
        out["detail"] = "deactivating (%s)" % sub
    elif active == "failed":
        out["state"] = "fatal"
        if result == "start-limit-hit":
            out["detail"] = (
                "start limit hit after %d restart(s) (StartLimitBurst); `start` resets it" % restarts
            )
        else:
            out["detail"] = "failed: Result=%s%s%s" % (
                result,
                ", " + ended if ended else "",
                " after %d restart(s)" % restarts if restarts else "",
            )
    elif active == "inactive":
        out["state"] = "stopped"
        out["detail"] = (
            "stopped by `stop`" if stopped_by_user else ("inactive" + (" (%s)" % ended if ended else ""))
        )
    return out


def _quote_env(key, value):
    """One Environment= assignment, quoted for systemd (double quotes, backslash escapes)."""
    text = "%s=%s" % (key, value)
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _spec_text(text):
    """A value systemd reads with specifier expansion (%n, %h...): % doubled, one line."""
    return " ".join(str(text).split("\n")).replace("%", "%%")


def _exec_word(word):
    """An ExecStart word: specifiers (%) doubled, quoted when needed (systemd's own quoting)."""
    word = word.replace("%", "%%")
    if word and not re.search(r"[\s\"'\\;$]", word):
        return word
    return '"%s"' % word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")


def render_unit(
    description,
    argv,
    cwd,
    log,
    env=None,
    env_file=None,
    restart=None,
    user=None,
    stop_timeout=10.0,
    stop_signal="TERM",
    wanted_by="multi-user.target",
):
    """The unit file for a service the tool used to run itself. Pure: every path is already
    absolute (expanded on the host). Secrets stay in the env file (EnvironmentFile=)."""
    restart = restart or {}
    policy = restart.get("policy", "no")
    backoff = float(restart.get("backoff", 1.0))
    breaker = int(restart.get("breaker", 5))
    min_uptime = float(restart.get("min_uptime", 30.0))
    lines = [MARKER, "[Unit]", "Description=%s" % _spec_text(description)]
    if policy != "no":
        # breaker short runs in a row give up (fatal): as many starts within the time they take
        lines.append("StartLimitIntervalSec=%ds" % int(round(breaker * (min_uptime + backoff))))
        lines.append("StartLimitBurst=%d" % breaker)
    lines += ["", "[Service]", "Type=simple"]
    if user:
        lines.append("User=%s" % user)
    lines.append("WorkingDirectory=%s" % _spec_text(cwd))
    for key in sorted(env or {}):
        lines.append("Environment=%s" % _quote_env(key, env[key]))
    if env_file:
        lines.append("EnvironmentFile=%s" % _spec_text(env_file))
    lines.append("ExecStart=%s" % " ".join(_exec_word(w) for w in argv))
    lines.append("StandardOutput=append:%s" % _spec_text(log))
    lines.append("StandardError=inherit")
    lines.append("Restart=%s" % policy)
    if policy != "no":
        lines.append("RestartSec=%gs" % backoff)
    lines += [
        "KillMode=control-group",
        "KillSignal=SIG%s" % stop_signal,
        "TimeoutStopSec=%gs" % stop_timeout,
        "",
        "[Install]",
        "WantedBy=%s" % wanted_by,
        "",
    ]
    return "\n".join(lines)


def crontab_line(python, archive, spec_path):
    """The alternative where there is no systemd: a user crontab @reboot line that starts the
    tool's supervisor for the service at boot."""
    return "@reboot %s %s supervise %s >/dev/null 2>&1" % (
        shlex.quote(python),
        shlex.quote(archive),
        shlex.quote(spec_path),
    )


def unit_path(scope, unit, home):
    if scope == "user":
        return os.path.join(home, ".config", "systemd", "user", unit)
    return os.path.join("/etc/systemd/system", unit)


def sudo_problem(stderr):
    """A clear sentence when sudo refused (no right / would prompt / not installed), else None."""
    text = stderr.strip()
    if "a password is required" in text or "a terminal is required" in text:
        return "sudo needs a password for this user (sudo -n refuses to prompt)"
    if "is not in the sudoers file" in text or "may not run" in text or "not allowed to execute" in text:
        return "this user may not run it through sudo"
    return None


def cgroup_dir(control_group, roots=CGROUP_ROOTS):
    """The directory of the unit's cgroup on this host (unified or hybrid layout), or None."""
    if not control_group:
        return None
    for root in roots:
        path = root + control_group
        if os.path.isfile(os.path.join(path, "cgroup.procs")):
            return path
    return None


def cgroup_pids(path):
    """Every pid in the cgroup and its sub-cgroups."""
    out = set()
    if not path:
        return out
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    out.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
    return out


# --------------------------------------------------------------------------- execution


def _run(argv, timeout=CMD_TIMEOUT, input_text=None, env=None):
    """(exit code, stdout, stderr); 127 when the program is missing, 124 on timeout."""
    try:
        p = subprocess.run(
            argv,
            input=input_text,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            timeout=timeout,
            universal_newlines=True,
            env=env,
        )
    except FileNotFoundError:
        return 127, "", "%s: not found" % argv[0]
    except subprocess.TimeoutExpired:
        return 124, "", "%s did not answer within %gs" % (" ".join(argv[:4]), timeout)
    return p.returncode, p.stdout, p.stderr


class JournalWatch:
    """The unit's journal lines after a cursor, as they arrive (one ``journalctl -f`` process)."""

    def __init__(self, argv):
        self.path = "the journal of " + argv[-1].split("=", 1)[-1]
        self.buf = b""
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self.proc = None

    def new_lines(self):
        if self.proc is None:
            return []
        out = []
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        out.extend(ln.decode("utf-8", "replace") for ln in done)
        return out

    def close(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(timeout=5)
        self.proc.stdout.close()


class Units:
    """Start/stop/status/enable/persist of unit services, sharing the lifecycle's secrets, state
    store and process-table helpers."""

    def __init__(self, lc, euid=None):
        self.lc = lc
        self.euid = os.geteuid() if euid is None else euid

    # --- plumbing -------------------------------------------------------------------------

    def _env(self, scope):
        env = dict(os.environ)
        if scope == "user" and not env.get("XDG_RUNTIME_DIR"):
            env["XDG_RUNTIME_DIR"] = "/run/user/%d" % self.euid
        return env

    def booted(self):
        return os.path.isdir("/run/systemd/system")

    def ctl(self, spec, args, timeout=CMD_TIMEOUT, change=True):
        """systemctl ARGS for the spec's unit scope; through sudo -n when it changes a system unit
        and we are not root. UnitError with what to do when it cannot run."""
        scope = spec.get("scope") or "system"
        if not self.booted():
            raise UnitError(
                "this host does not run systemd (no /run/systemd/system), so %s cannot be driven by "
                'systemctl here; let the tool run it (remove manager = "systemd", give cmd)' % unit_of(spec)
            )
        sudo = change and needs_sudo(scope, self.euid)
        argv = systemctl_argv(scope, args, sudo)
        rc, out, err = _run(argv, timeout, env=self._env(scope))
        if rc == 127:
            raise UnitError("%s is not installed on this host" % ("sudo" if sudo else "systemctl"))
        if sudo and rc != 0:
            why = sudo_problem(err)
            if why:
                raise UnitError(
                    "`%s` needs root: %s. Grant it without a password (a sudoers line such as "
                    "`%s ALL=(root) NOPASSWD: /usr/bin/systemctl, /usr/bin/journalctl`), connect as "
                    'root, or use scope = "user"' % (" ".join(argv[2:]), why, _user_name())
                )
        return rc, out, err

    def show(self, spec):
        rc, out, err = self.ctl(
            spec, ["show", unit_of(spec)] + ["-p%s" % p for p in SHOW_PROPS], change=False
        )
        if rc != 0:
            raise UnitError("systemctl show %s failed: %s" % (unit_of(spec), (err or out).strip()[:200]))
        return parse_show(out)

    def pids(self, props):
        return cgroup_pids(cgroup_dir(props.get("ControlGroup")))

    def main_pid(self, spec):
        """(MainPID or None, note): the lifecycle's live_pid for a unit (children hang under it)."""
        try:
            props = self.show(spec)
        except UnitError as exc:
            return None, str(exc)
        pid = _int(props.get("MainPID"))
        if pid and props.get("ActiveState") in ("active", "reloading", "deactivating"):
            return pid, None
        return None, None

    def _journal_sudo(self, spec):
        return needs_sudo(spec.get("scope") or "system", self.euid)

    def cursor(self, spec):
        scope = spec.get("scope") or "system"
        rc, out, err = _run(cursor_argv(scope, self._journal_sudo(spec)), env=self._env(scope))
        if rc != 0 and self._journal_sudo(spec) and sudo_problem(err):
            raise UnitError("reading the journal of %s needs root: %s" % (unit_of(spec), sudo_problem(err)))
        return parse_cursor(out)

    def journal_lines(self, spec, n=LOG_TAIL, after=None):
        scope = spec.get("scope") or "system"
        args = ["-o", "cat", "-n", str(int(n))] + (["--after-cursor", after] if after else [])
        rc, out, err = _run(
            journalctl_argv(scope, unit_of(spec), args, self._journal_sudo(spec)), env=self._env(scope)
        )
        if rc != 0:
            why = sudo_problem(err) if self._journal_sudo(spec) else None
            raise UnitError("cannot read the journal of %s: %s" % (unit_of(spec), why or err.strip()[:200]))
        return [self.lc.secrets.redact(ln) for ln in out.splitlines()]

    def journal_watch(self, spec, after):
        scope = spec.get("scope") or "system"
        args = ["-o", "cat", "-f"] + (["--after-cursor", after] if after else ["-n", "all"])
        return JournalWatch(journalctl_argv(scope, unit_of(spec), args, self._journal_sudo(spec)))

    def _uses_journal(self, spec):
        return bool(spec.get("journal")) and not spec.get("persist")

    def _tail(self, spec, after=None, position=None):
        try:
            if self._uses_journal(spec):
                return self.journal_lines(spec, LOG_TAIL, after)
            return self.lc.tail(spec, since=position)
        except UnitError as exc:
            return ["(%s)" % exc]

    def _result(self, spec, outcome, **kw):
        r = {
            "name": spec["name"],
            "outcome": outcome,
            "pid": None,
            "gates": [],
            "detail": "",
            "unit": unit_of(spec),
        }
        r.update(kw)
        return self.lc.secrets.redact_obj(r)

    # --- status ---------------------------------------------------------------------------

    def status_one(self, spec, table, health=True):
        out = {
            "name": spec["name"],
            "state": "unknown",
            "pid": None,
            "uptime": None,
            "port": spec.get("port"),
            "port_holders": [],
            "port_ok": None,
            "health": None,
            "detail": "",
            "supervised_by": spec.get("supervised_by"),
            "unit": unit_of(spec),
            "manager": "systemd",
        }
        try:
            props = self.show(spec)
        except UnitError as exc:
            out["detail"] = str(exc)
            return out
        state = self.lc.store.load(spec["name"]) or {}
        mapped = state_of(props, bool(state.get("stopped")), time.monotonic())
        out.update(
            state=mapped["state"],
            detail=mapped["detail"],
            restarts=mapped["restarts"],
            result=mapped["result"],
            last_exit=mapped["last_exit"],
            enabled=props.get("UnitFileState") or "-",
            invocation_id=props.get("InvocationID") or None,
        )
        mine = self.pids(props)
        pid = _int(props.get("MainPID"))
        if pid and mapped["state"] == "running":
            out["pid"] = pid
            started = _int(props.get("ExecMainStartTimestampMonotonic"))
            out["started_monotonic"] = started / 1e6 if started else None
            p = table.get(pid)
            if started:  # systemd's own clock of this invocation's main process
                out["uptime"] = max(0.0, time.monotonic() - started / 1e6)
            elif p is not None:
                out["uptime"] = max(0.0, time.time() - p.start_epoch)
        strays = [p for p in self.lc.owned_matches(spec, table) if p.pid not in mine]
        if strays:
            out["detail"] = (out["detail"] + "; " if out["detail"] else "") + (
                "outside the unit's cgroup but matching its pattern: %s"
                % describe_pids(table, [p.pid for p in strays])
            )
            if out["state"] == "stopped":
                out["state"] = "unknown"
        if spec.get("port"):
            holders = procs.listening_pids(spec["port"])
            out["port_holders"] = [
                {"pid": h, "cmd": (table[h].cmdline[:80] if h in table else "?"), "own": h in mine}
                for h in sorted(holders)
            ]
            out["port_ok"] = bool(holders & mine)
        if health and health_checks(spec) and out["state"] == "running":
            t = time.monotonic()
            # an answer counts only from a port held by the unit's own cgroup
            ok, detail, results = run_health_checks(health_checks(spec), self.lc.secrets, owner_pids=mine,
                                                    table=table)
            out["health"] = {
                "ok": ok,
                "detail": self.lc.secrets.redact(detail),
                "ms": round((time.monotonic() - t) * 1000, 1),
                "checks": results,
            }
        return self.lc.secrets.redact_obj(out)

    # --- start ----------------------------------------------------------------------------

    def _gates(self, spec, children, watches, t_start):
        """[(name, check(table, props, mine) -> (ok, detail))]: the service's own gates against
        the unit's cgroup, and each child's (under the main process, its log, port, health)."""
        gates = []
        ready = spec.get("ready") or {}

        def log_gate(watch, pattern):
            rx = re.compile(pattern)

            def check(_table, _props, _mine):
                for line in watch.new_lines():
                    if rx.search(line):
                        return True, "log line matched: %s" % self.lc.secrets.redact(line.strip())[:120]
                return False, "no line matching /%s/ in %s since this start" % (pattern, watch.path)

            return check

        if ready.get("log") and spec["name"] in watches:
            gates.append(("log", log_gate(watches[spec["name"]], ready["log"])))
        if ready.get("port") and spec.get("port"):
            port = spec["port"]
            gates.append(("port", lambda table, _p, mine: port_gate(table, port, mine)))
        if ready.get("health"):
            for h in health_checks(spec, gating=True):

                def health_check(table, _p, mine, h=h):
                    ok, detail, _ = http_check(h, self.lc.secrets, timeout=1.0, owner_pids=mine, table=table)
                    return ok, self.lc.secrets.redact(detail)

                gates.append((health_label(h), health_check))
        for c in children:
            cr = c.get("ready") or {}

            def under(table, props, _mine, c=c):
                ok, detail, _ = child_gate(table, _int(props.get("MainPID")), c["match"], since_epoch=t_start)
                return ok, detail

            gates.append((c["name"] + ": child", under))
            if cr.get("log") and c["name"] in watches:
                gates.append((c["name"] + ": log", log_gate(watches[c["name"]], cr["log"])))
            if cr.get("port") and c.get("port"):
                gates.append(
                    (
                        c["name"] + ": port",
                        lambda table, _p, mine, port=c["port"]: port_gate(table, port, mine),
                    )
                )
            if cr.get("health"):
                for h in health_checks(c, gating=True):
                    gates.append(
                        (
                            c["name"] + ": " + health_label(h),
                            lambda table, _p, mine, h=h: http_check(
                                h, self.lc.secrets, timeout=1.0, owner_pids=mine, table=table)[:2],
                        )
                    )
        if not gates:
            born = self.lc.clock()

            def alive(_t, _p, _m):
                up = self.lc.clock() - born
                if up >= SETTLE:
                    return True, "active %.1fs after the start (no gates declared)" % up
                return False, "active for %.1fs so far" % up

            gates.append(("alive", alive))
        return gates

    def start_one(self, spec, children):
        name, unit = spec["name"], unit_of(spec)
        t_start, m_start = time.time(), self.lc.clock()
        try:
            if spec.get("persist"):
                wrote = self.ensure_unit(spec)
                if wrote.get("problem"):
                    return self._result(spec, "failed", detail=wrote["problem"])
                if wrote["changed"]:  # persist = true: a (re)written unit is enabled, to come back at boot
                    self.ctl(spec, ["enable", unit])
            before = self.show(spec)
            if before.get("LoadState") != "loaded":
                return self._result(
                    spec,
                    "failed",
                    detail=state_of(before)["detail"]
                    + ("; install the unit, or let the tool write it (persist = true)"),
                )
            if before.get("ActiveState") == "active":
                return self._already_running(spec, children, before)
            if before.get("ActiveState") == "activating" and before.get("SubState") == "auto-restart":
                return self._result(
                    spec,
                    "failed",
                    detail="%s is restarting on its own (%s); `restart` "
                    "or `stop` it first" % (unit, state_of(before)["detail"]),
                )
            refused = self._preflight(spec, children, before)
            if refused:
                return self._result(spec, "failed", failed_gate=refused[0], detail=refused[1])
            cursor = self.cursor(spec) if self._uses_journal(spec) else None
        except UnitError as exc:
            return self._result(spec, "failed", detail=str(exc))
        watches, position = {}, None
        if self._uses_journal(spec):
            watches[name] = self.journal_watch(spec, cursor)
        else:
            log_path = self.lc.log_path(spec)
            try:
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
            except OSError:
                pass
            watches[name] = LogWatch(log_path)
            position = (watches[name].offset, watches[name].inode)
        for c in children:
            if (c.get("ready") or {}).get("log"):
                watches[c["name"]] = LogWatch(self.lc.log_path(c))
        try:
            return self._start_and_gate(spec, children, before, cursor, position, watches, t_start, m_start)
        finally:
            for w in watches.values():
                w.close()

    def _preflight(self, spec, children, props):
        """(gate, why) when the start must not even be tried: a copy already runs outside the
        unit's cgroup (not signalled: it is not provably the unit's), or the port is held."""
        table = self.lc.snapshot()
        mine = self.pids(props)
        for s in [spec] + list(children):
            strays = self._strays(table, s, mine)
            if strays:
                return "process", (
                    "%s is already running outside %s: %s; not signalled (not provably the unit's): stop it "
                    "yourself (find it with `pgrep -af '%s'`)"
                    % (s["name"], unit_of(spec), describe_pids(table, [p.pid for p in strays]), s["match"])
                )
            if s.get("port"):
                holders = procs.listening_pids(s["port"]) - mine
                if holders or (not mine and procs.port_listening(s["port"])):
                    return "port", (
                        "port %d (%s) is already held by %s, which is not %s; find it with `ss -ltnp "
                        "'sport = :%d'`"
                        % (s["port"], s["name"], describe_pids(table, holders), unit_of(spec), s["port"])
                    )
        return None

    def _already_running(self, spec, children, props):
        table = self.lc.snapshot()
        mine = self.pids(props)
        pid = _int(props.get("MainPID")) or None
        bad = []
        for gname, check in self._gates(spec, children, {}, 0.0):
            if gname in ("log", "alive") or gname.endswith(": log"):
                continue
            ok, detail = check(table, props, mine)
            if not ok:
                bad.append("%s: %s" % (gname, detail))
        if bad:
            return self._result(
                spec,
                "failed",
                pid=pid,
                detail="%s is active (pid %s) but not healthy: %s; use "
                "`restart`" % (unit_of(spec), pid, bad[0]),
            )
        return self._result(
            spec,
            "already-running",
            pid=pid,
            detail="%s already active (pid %s); nothing to do" % (unit_of(spec), pid),
        )

    def _start_and_gate(self, spec, children, before, cursor, position, watches, t_start, m_start):
        name, unit = spec["name"], unit_of(spec)
        timeout = max([spec["ready"]["timeout"]] + [c["ready"]["timeout"] for c in children])
        deadline = m_start + timeout
        self.lc.store.mark(name, manager="systemd", unit=unit, stopped=False, last_start="starting")
        rc, out, err = self.ctl(spec, ["start", unit], timeout=timeout)
        if rc != 0:
            return self._failed(
                spec,
                before,
                cursor,
                position,
                "start",
                "systemctl start %s failed (exit %d): %s" % (unit, rc, (err or out).strip()[:300]),
            )
        gates = self._gates(spec, children, watches, t_start)
        passed, details = [], {}
        first = None
        while True:
            props = self.show(spec)
            inv = props.get("InvocationID")
            if first is None and inv and inv != before.get("InvocationID"):
                first = inv
                self.lc.emit(
                    {
                        "event": "progress",
                        "service": name,
                        "message": "%s started: pid %s, invocation %s" % (unit, props.get("MainPID"), inv),
                    }
                )
            pending = gates[0][0] if gates else "start"
            if (
                props.get("ActiveState") not in ("active", "activating")
                or props.get("SubState") == "auto-restart"
            ):
                return self._failed(
                    spec,
                    props,
                    cursor,
                    position,
                    pending,
                    "%s left the active state before %s passed: %s"
                    % (unit, pending, state_of(props)["detail"]),
                    props,
                )
            if first is not None and inv != first:
                return self._failed(
                    spec,
                    props,
                    cursor,
                    position,
                    pending,
                    "%s was restarted by systemd (new invocation) before %s passed" % (unit, pending),
                    props,
                )
            if first is not None and props.get("ActiveState") == "active":
                self._poll_gates(gates, props, details, passed, m_start, self.lc.clock)
                if not gates:
                    pid = _int(props.get("MainPID")) or None
                    self.lc.store.mark(
                        name,
                        manager="systemd",
                        unit=unit,
                        stopped=False,
                        last_start="started",
                        invocation_id=first,
                        pid=None,
                        main_pid=pid,
                        started_at=t_start,
                    )
                    return self._result(
                        spec,
                        "started",
                        pid=pid,
                        gates=passed,
                        invocation_id=first,
                        elapsed=round(self.lc.clock() - m_start, 3),
                        detail="started %s: pid %s" % (unit, pid),
                    )
            if self.lc.clock() >= deadline:
                g = gates[0][0] if gates else "start"
                detail = "timed out after %.1fs: %s" % (
                    self.lc.clock() - m_start,
                    details.get(g) or "%s never became active" % unit,
                )
                return self._failed(spec, props, cursor, position, g, detail, props, passed)
            self.lc.sleep(POLL)

    def _failed(self, spec, props, cursor, position, gate, detail, last=None, passed=()):
        """Leave nothing running: stop the unit; the log lines since this start come back."""
        unit = unit_of(spec)
        exit_code = None
        try:
            self.ctl(spec, ["stop", unit], timeout=spec["stop_timeout"] + 10.0)
            after = self.show(spec)
            if after.get("ExecMainCode"):
                exit_code = _int(after.get("ExecMainStatus"))
                if exit_code == 0 and _int(after.get("ExecMainCode")) != 1:
                    exit_code = None
        except UnitError as exc:
            detail += "; and stopping it failed: %s" % exc
        self.lc.store.mark(spec["name"], stopped=True, last_start="failed", stopped_at=time.time())
        return self._result(
            spec,
            "failed",
            gates=list(passed) + [{"name": gate, "ok": False, "detail": detail}],
            failed_gate=gate,
            detail=detail,
            exit_code=exit_code,
            log_tail=self._tail(spec, after=cursor, position=position),
        )

    # --- stop -----------------------------------------------------------------------------

    def stop_one(self, spec, children):
        name, unit = spec["name"], unit_of(spec)
        try:
            before = self.show(spec)
            if before.get("LoadState") == "not-found":
                return self._result(spec, "not-running", detail="unit %s is not installed" % unit)
            was = before.get("ActiveState") in ("active", "activating", "reloading", "deactivating")
            pid = _int(before.get("MainPID")) or None
            rc, out, err = self.ctl(spec, ["stop", unit], timeout=spec["stop_timeout"] + 15.0)
            if rc != 0:
                return self._result(
                    spec,
                    "failed",
                    pid=pid,
                    detail="systemctl stop %s failed (exit %d): %s" % (unit, rc, (err or out).strip()[:300]),
                )
            after = self.show(spec)
        except UnitError as exc:
            return self._result(spec, "failed", detail=str(exc))
        self.lc.store.mark(
            name, manager="systemd", unit=unit, stopped=True, stopped_at=time.time(), stopped_by="user"
        )
        left = self.pids(after)
        table = self.lc.snapshot()
        if left:
            return self._result(
                spec,
                "failed",
                pid=pid,
                detail="%s still has processes in its cgroup: %s" % (unit, describe_pids(table, left)),
            )
        outside = []
        for s in [spec] + list(children):
            outside.extend(p.pid for p in self.lc.owned_matches(s, table))
        if outside:
            return self._result(
                spec,
                "failed",
                pid=pid,
                orphans=[{"pid": p} for p in outside],
                detail=(
                    "%s stopped, but %d process(es) matching its pattern run outside its cgroup: %s (not "
                    "signalled: not provably the unit's)"
                    % (unit, len(outside), describe_pids(table, outside))
                ),
            )
        if not was:
            return self._result(
                spec,
                "not-running",
                detail="%s was not running (%s)"
                % (unit, state_of(before)["detail"] or before.get("ActiveState")),
            )
        return self._result(
            spec,
            "stopped",
            pid=pid,
            detail="stopped %s (systemctl stop: TERM to the cgroup, KILL after TimeoutStopSec)" % unit,
        )

    # --- enable / disable -----------------------------------------------------------------

    def enable_one(self, spec, children, enable=True, now=False):
        unit = unit_of(spec)
        try:
            if spec.get("persist") and enable:
                wrote = self.ensure_unit(spec)
                if wrote.get("problem"):
                    return self._result(spec, "failed", detail=wrote["problem"])
            rc, out, err = self.ctl(spec, ["enable" if enable else "disable", unit])
            if rc != 0:
                return self._result(
                    spec,
                    "failed",
                    detail="systemctl %s %s failed: %s"
                    % ("enable" if enable else "disable", unit, (err or out).strip()[:300]),
                )
            props = self.show(spec)
        except UnitError as exc:
            return self._result(spec, "failed", detail=str(exc))
        r = self._result(
            spec,
            "enabled" if enable else "disabled",
            enabled=props.get("UnitFileState"),
            detail="%s is %s at boot" % (unit, props.get("UnitFileState")),
        )
        if now:
            moved = self.start_one(spec, children) if enable else self.stop_one(spec, children)
            moved["detail"] = r["detail"] + "; " + moved["detail"]
            moved["enabled"] = r["enabled"]
            return moved
        return r

    # --- persist --------------------------------------------------------------------------

    def render_for(self, spec):
        """(unit text, unit path, problem): the unit for a tool-run service, expanded here."""
        checkout = self.lc.checkout
        cwd = expand(spec.get("cwd") or checkout, checkout)
        try:
            argv = shlex.split(spec["cmd"] or "")
        except ValueError as exc:
            return None, None, "cannot parse cmd: %s" % exc
        if not argv:
            return None, None, "%s has no cmd to run" % spec["name"]
        if "/" in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = os.path.normpath(os.path.join(cwd, argv[0]))
        scope = spec.get("scope") or "system"
        env_file = expand(spec["env_file"], checkout) if spec.get("env_file") else None
        user = _user_name() if scope == "system" and self.euid != 0 else None
        text = render_unit(
            description="%s (ops service %s)" % (spec["cmd"], spec["name"]),
            argv=argv,
            cwd=cwd,
            log=self.lc.log_path(spec),
            env=spec.get("env") or {},
            env_file=env_file,
            restart=spec.get("restart"),
            user=user,
            stop_timeout=spec["stop_timeout"],
            stop_signal=spec.get("stop_signal") or "TERM",
            wanted_by="default.target" if scope == "user" else "multi-user.target",
        )
        return text, unit_path(scope, unit_of(spec), os.path.expanduser("~")), None

    def ensure_unit(self, spec, dry_run=False):
        """Write the unit file if it differs (never over a unit the tool did not write), then
        daemon-reload. {"path", "text", "changed", "problem"}."""
        text, path, problem = self.render_for(spec)
        if problem:
            return {"problem": problem}
        out = {"path": path, "text": text, "changed": False, "problem": None, "unit": unit_of(spec)}
        if not self.booted():
            out["problem"] = self.no_systemd(spec)
            return out
        if dry_run:
            return out
        try:
            with open(path) as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        except OSError:
            current = None
        try:  # systemd opens the log (StandardOutput=append:) but does not create its directory
            os.makedirs(os.path.dirname(self.lc.log_path(spec)), exist_ok=True)
        except OSError:
            pass
        if current == text:
            return out
        if current is not None and MARKER not in current:
            out["problem"] = "%s exists and was not written by this tool; not overwriting it" % path
            return out
        if current is None:
            props = self.show(spec)
            if props.get("LoadState") == "loaded":
                out["problem"] = 'a unit %s already exists (%s); choose another name with unit = "..."' % (
                    unit_of(spec),
                    props.get("FragmentPath"),
                )
                return out
        scope = spec.get("scope") or "system"
        if needs_sudo(scope, self.euid):
            rc, _o, err = _run(["sudo", "-n", "tee", path], input_text=text)
            if rc != 0:
                out["problem"] = "cannot write %s: %s" % (path, sudo_problem(err) or err.strip()[:200])
                return out
        else:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = path + ".ops-tmp"
                with open(tmp, "w") as f:
                    f.write(text)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except OSError as exc:
                out["problem"] = "cannot write %s: %s" % (path, exc.strerror or exc)
                return out
        rc, o, err = self.ctl(spec, ["daemon-reload"], timeout=60.0)
        if rc != 0:
            out["problem"] = "systemctl daemon-reload failed: %s" % (err or o).strip()[:200]
            return out
        out["changed"] = True
        return out

    def no_systemd(self, spec):
        import sys

        archive = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".pyz") else "AGENT.pyz"
        spec_path = os.path.join(self.lc.store.root, "services", spec["name"] + ".supervise.json")
        policy = (spec.get("restart") or {}).get("policy", "no")
        return (
            "this host does not run systemd (no /run/systemd/system), so no unit can bring %s back after a "
            "reboot. The alternative here: start the tool's own supervisor at boot from your crontab "
            "(crontab -e): %s%s"
            % (
                spec["name"],
                crontab_line(sys.executable or "python3", archive, spec_path),
                ""
                if policy != "no"
                else ' (give the service restart = "on-failure" or "always" first, '
                "and `inv start` it once, so the tool runs it under its supervisor and writes that spec)",
            )
        )

    def persist_one(self, spec, dry_run=False):
        """Write the unit, daemon-reload, enable; mark the service as managed by it from now on
        (a tool-run process still running is stopped the tool's way and the unit started)."""
        spec = dict(spec, persist=True, manager="systemd")
        if not self.booted():
            return self._result(spec, "failed", detail=self.no_systemd(spec))
        wrote = self.ensure_unit(spec, dry_run=dry_run)
        if wrote.get("problem"):
            return self._result(
                spec, "failed", detail=wrote["problem"], unit_text=wrote.get("text"), path=wrote.get("path")
            )
        if dry_run:
            return self._result(
                spec,
                "planned",
                unit_text=wrote["text"],
                path=wrote["path"],
                detail="would write %s, daemon-reload, enable %s" % (wrote["path"], unit_of(spec)),
            )
        try:
            rc, out, err = self.ctl(spec, ["enable", unit_of(spec)])
            if rc != 0:
                return self._result(
                    spec, "failed", detail="systemctl enable failed: %s" % (err or out).strip()[:300]
                )
        except UnitError as exc:
            return self._result(spec, "failed", detail=str(exc))
        self.lc.store.mark(
            spec["name"], persisted_unit=unit_of(spec), persisted_scope=spec.get("scope") or "system"
        )
        return self._result(
            spec,
            "persisted",
            path=wrote["path"],
            changed=wrote["changed"],
            unit_text=wrote["text"],
            detail="wrote %s%s, enabled %s"
            % (wrote["path"], "" if wrote["changed"] else " (unchanged)", unit_of(spec)),
        )

    # --- logs -----------------------------------------------------------------------------

    def follow(self, spec, seconds, emit, stdin):
        watch = self.journal_watch(spec, self.cursor(spec))
        deadline = time.monotonic() + float(seconds) if seconds else None
        try:
            while deadline is None or time.monotonic() < deadline:
                for line in watch.new_lines():
                    emit({"event": "line", "line": self.lc.secrets.redact(line)})
                r, _, _ = select.select([stdin], [], [], 0.1)
                if r:
                    return {"unit": unit_of(spec), "ended": "client"}
            return {"unit": unit_of(spec), "ended": "timeout"}
        finally:
            watch.close()

    def _poll_gates(self, gates, props, details, passed, since, clock):
        """One pass over the pending gates against the unit's cgroup now: those that pass move
        from `gates` to `passed` (with their time since `since`), every detail is kept. Returns
        the process table it judged."""
        table = self.lc.snapshot()
        mine = self.pids(props)
        for g in list(gates):
            ok, detail = g[1](table, props, mine)
            details[g[0]] = detail
            if ok:
                gates.remove(g)
                passed.append({"name": g[0], "ok": True, "detail": detail,
                               "elapsed": round(clock() - since, 3)})
        return table

    # --- verify (the hooks of ops/agent/checks.py: ch is its Checks) -----------------------

    def _strays(self, table, spec, mine):
        return [p for p in self.lc.owned_matches(spec, table) if p.pid not in mine]

    def check_tree(self, ch, spec):
        """The unit is active, its main process is in its cgroup, and nothing matching its
        pattern runs outside the cgroup. The evidence: the cgroup's processes as a tree."""
        from .checks import offender

        t0 = ch.clock()
        unit = unit_of(spec)
        try:
            props = self.show(spec)
        except UnitError as exc:
            return ch._check("tree", spec, False, str(exc), t0, unit=unit)
        table = self.lc.snapshot()
        mine = self.pids(props)
        main = _int(props.get("MainPID"))
        mapped = state_of(props)
        offenders = [
            offender(table, p, "outside the cgroup of %s" % unit) for p in self._strays(table, spec, mine)
        ]
        lines = procs.tree_lines(table, main) if main else []
        shown = set([main]) | set(p.pid for p in procs.descendants(table, main)) if main else set()
        for pid in sorted(mine - shown):  # in the cgroup but not under the main process
            lines.extend(procs.tree_lines(table, pid))
        extra = {
            "unit": unit,
            "pid": main or None,
            "tree": lines,
            "offenders": offenders,
            "invocation_id": props.get("InvocationID") or None,
            "cgroup": props.get("ControlGroup"),
        }
        if mapped["state"] != "running" or not main:
            return ch._check(
                "tree", spec, False, "%s is %s: %s" % (unit, mapped["state"], mapped["detail"]), t0, **extra
            )
        if main not in mine:
            return ch._check(
                "tree",
                spec,
                False,
                "the main pid %d of %s is not in its cgroup %s" % (main, unit, props.get("ControlGroup")),
                t0,
                **extra,
            )
        detail = "%s: main pid %d, %d process(es) in its cgroup %s" % (
            unit,
            main,
            len(mine),
            props.get("ControlGroup"),
        )
        if offenders:
            return ch._check(
                "tree",
                spec,
                False,
                detail
                + "; but %d matching process(es) run outside it: %s"
                % (len(offenders), describe_pids(table, [o["pid"] for o in offenders])),
                t0,
                **extra,
            )
        return ch._check("tree", spec, True, detail, t0, **extra)

    def check_orphans(self, ch, spec):
        from .checks import offender

        t0 = ch.clock()
        unit = unit_of(spec)
        try:
            props = self.show(spec)
        except UnitError as exc:
            return ch._check("orphans", spec, False, str(exc), t0, offenders=[])
        table = self.lc.snapshot()
        mine = self.pids(props)
        offenders = [
            offender(table, p, "outside the cgroup of %s" % unit) for p in self._strays(table, spec, mine)
        ]
        if offenders:
            detail = "%d process(es) matching /%s/ run outside the cgroup of %s: %s (%s)" % (
                len(offenders),
                spec["match"],
                unit,
                describe_pids(table, [o["pid"] for o in offenders]),
                offenders[0]["reason"],
            )
        else:
            detail = "none outside the cgroup of %s (%d process(es) in it)" % (unit, len(mine))
        return ch._check("orphans", spec, not offenders, detail, t0, offenders=offenders, unit=unit)

    def count(self, spec, table):
        """verify.watch's count for a unit: its pattern's matches, or (no pattern) its cgroup."""
        if spec.get("match") != NEVER_MATCHES:
            return len(ownership.instances(table, self.lc.owned_matches(spec, table)))
        try:
            return len(self.pids(self.show(spec)))
        except UnitError:
            return 0

    def check_restart(self, ch, spec, signame="KILL", timeout=30.0):
        """Kill the unit's main process; systemd's Restart= must bring back a NEW invocation (new
        InvocationID and MainPID) that passes the service's gates again, within timeout."""
        t0 = ch.clock()
        unit = unit_of(spec)
        signame = str(signame).upper()
        signame = signame[3:] if signame.startswith("SIG") else signame
        extra = {"signal": signame, "timeout": timeout, "old_pid": None, "new_pid": None, "unit": unit}
        try:
            props = self.show(spec)
        except UnitError as exc:
            return ch._check("restart", spec, False, str(exc), t0, **extra)
        if props.get("Restart") in (None, "", "no"):
            return ch._check(
                "restart",
                spec,
                False,
                "%s has Restart=no, so nothing would bring it back; it was not killed" % unit,
                t0,
                **extra,
            )
        old_pid, old_inv = _int(props.get("MainPID")), props.get("InvocationID")
        if props.get("ActiveState") != "active" or not old_pid:
            return ch._check(
                "restart",
                spec,
                False,
                "%s is not running (%s); nothing was killed"
                % (unit, state_of(props)["detail"] or props.get("ActiveState")),
                t0,
                **extra,
            )
        extra.update(old_pid=old_pid, old_invocation_id=old_inv)
        journal = self._uses_journal(spec)
        try:
            cursor = self.cursor(spec) if journal else None
        except UnitError as exc:
            return ch._check("restart", spec, False, str(exc) + "; nothing was killed", t0, **extra)
        watch = self.journal_watch(spec, cursor) if journal else LogWatch(self.lc.log_path(spec))
        try:
            try:
                rc, out, err = self.ctl(spec, ["kill", "--kill-whom=main", "-s", "SIG" + signame, unit])
            except UnitError as exc:
                return ch._check("restart", spec, False, str(exc), t0, **extra)
            if rc != 0:
                return ch._check(
                    "restart",
                    spec,
                    False,
                    "systemctl kill failed: %s" % (err or out).strip()[:200],
                    t0,
                    **extra,
                )
            killed = ch.clock()
            ch._progress(spec, "sent SIG%s to the main pid %d of %s" % (signame, old_pid, unit))
            deadline = killed + timeout
            new_inv, gates, passed, details = None, [], [], {}
            while True:
                props = self.show(spec)
                inv, pid = props.get("InvocationID"), _int(props.get("MainPID"))
                if props.get("ActiveState") == "failed":
                    extra["gates"] = passed
                    return ch._check(
                        "restart",
                        spec,
                        False,
                        "%s failed instead of restarting: %s" % (unit, state_of(props)["detail"]),
                        t0,
                        **extra,
                    )
                if new_inv is not None and inv != new_inv:
                    ch._progress(spec, "the new invocation died before it was ready; waiting again")
                    new_inv = None
                if (
                    new_inv is None
                    and inv
                    and inv != old_inv
                    and props.get("ActiveState") == "active"
                    and pid
                ):
                    new_inv = inv
                    extra.update(
                        new_pid=pid,
                        new_invocation_id=inv,
                        appeared_after=round(ch.clock() - killed, 3),
                        restarts=_int(props.get("NRestarts")),
                    )
                    gates = [
                        g
                        for g in self._gates(spec, [], {spec["name"]: watch}, time.time() - 1)
                        if g[0] != "alive"
                    ]
                    passed, details = [], {}
                if new_inv is not None:
                    table = self._poll_gates(gates, props, details, passed, killed, ch.clock)
                    if not gates:
                        took = round(ch.clock() - killed, 3)
                        extra.update(
                            restart_time=took, gates=passed, tree=procs.tree_lines(table, extra["new_pid"])
                        )
                        names = ", ".join(g["name"] for g in passed)
                        return ch._check(
                            "restart",
                            spec,
                            True,
                            "pid %d was killed (SIG%s); systemd (Restart=%s) "
                            "brought back pid %d (a new invocation) in %.2fs%s"
                            % (
                                old_pid,
                                signame,
                                props.get("Restart"),
                                extra["new_pid"],
                                took,
                                " (%s ok)" % names if names else "",
                            ),
                            t0,
                            **extra,
                        )
                if ch.clock() >= deadline:
                    extra["gates"] = passed
                    if new_inv is None:
                        detail = (
                            "no new invocation of %s became active within %gs after pid %d was killed (%s)"
                            % (unit, timeout, old_pid, state_of(props)["detail"] or props.get("ActiveState"))
                        )
                    else:
                        detail = "new pid %d came up, but within %gs %s" % (
                            extra["new_pid"],
                            timeout,
                            "; ".join("%s: %s" % (g[0], details.get(g[0]) or "not passed") for g in gates),
                        )
                    return ch._check("restart", spec, False, detail, t0, **extra)
                self.lc.sleep(POLL)
        finally:
            watch.close()


def _user_name():
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER") or "the SSH user"


__all__ = ["Units", "UnitError", "render_unit", "parse_show", "state_of"]


# --------------------------------------------------------------------------- dispatch and agent ops


def unit_spec(spec, store):
    """The spec as a unit service, or None: ``manager = "systemd"``, ``persist = true``, or a
    service `inv persist` turned into a unit (recorded in its state file)."""
    if is_unit(spec):
        return spec
    state = store.load(spec["name"]) if spec.get("cmd") else None
    if state and state.get("persisted_unit"):
        return dict(
            spec,
            manager="systemd",
            persist=True,
            unit=state["persisted_unit"],
            scope=state.get("persisted_scope") or "system",
        )
    return None


def _each_unit(args, emit, fn):
    from .lifecycle import Lifecycle

    lc = Lifecycle(args["host"], emit)
    specs = args.get("services") or []
    all_specs = dict((s["name"], s) for s in (args.get("all_services") or specs))
    lc.remember_secrets(specs, all_specs)
    units = Units(lc)
    results = []
    for spec in specs:
        if spec.get("supervised_by"):
            continue
        children = [all_specs[c] for c in spec.get("children") or []]
        r = fn(units, spec, unit_spec(spec, lc.store), children)
        r = lc.secrets.redact_obj(r)
        emit({"event": "service", "phase": args.get("phase") or "unit", "result": r})
        results.append(r)
    return {"ok": all(r["outcome"] != "failed" for r in results), "services": results}


def _not_a_unit(spec, what):
    return {
        "name": spec["name"],
        "outcome": "failed",
        "pid": None,
        "gates": [],
        "detail": "%s is run by the tool, not by systemd: %s applies to unit services (manager = "
        '"systemd", or `inv persist` it first)' % (spec["name"], what),
    }


def op_unit_enable(args, emit):
    now, enable = bool(args.get("now")), bool(args.get("enable", True))

    def one(units, spec, unit, children):
        if unit is None:
            return _not_a_unit(spec, "enable" if enable else "disable")
        return units.enable_one(unit, children, enable=enable, now=now)

    return _each_unit(args, emit, one)


def op_unit_persist(args, emit):
    dry_run = bool(args.get("dry_run"))

    def one(units, spec, unit, children):
        if spec.get("manager") == "systemd":
            return units._result(
                spec, "failed", detail='%s is already a systemd unit (manager = "systemd")' % (unit_of(spec))
            )
        if dry_run:
            return units.persist_one(spec, dry_run=True)
        running, _note = units.lc.live_pid(spec) if unit is None else (None, None)
        r = units.persist_one(spec)
        if r["outcome"] != "persisted" or running is None:
            return r
        # it runs under the tool now: hand it over (stop the tool's way, start the unit with gates)
        stopped = units.lc.stop_one(spec, children)
        if stopped["outcome"] == "failed":
            r.update(
                outcome="failed",
                detail=r["detail"] + "; stopping the tool-run process failed: " + stopped["detail"],
            )
            return r
        started = units.start_one(dict(spec, persist=True, manager="systemd"), children)
        started["detail"] = r["detail"] + "; " + started["detail"]
        started["unit_text"] = r.get("unit_text")
        started["path"] = r.get("path")
        return started

    return _each_unit(args, emit, one)


def op_unit_logs(args, emit):
    from .lifecycle import Lifecycle

    lc = Lifecycle(args["host"], emit)
    spec = args["service"]
    lc.remember_secrets([spec], dict((s["name"], s) for s in args.get("all_services") or [spec]))
    units = Units(lc)
    unit = unit_spec(spec, lc.store) or spec
    if args.get("follow"):
        import sys

        return units.follow(unit, args.get("seconds"), emit, sys.stdin)
    lines = units.journal_lines(unit, int(args.get("lines", 50)))
    return {"path": "journal: " + unit_of(unit), "lines": lines, "exists": True}


OPS = {"unit_enable": op_unit_enable, "unit_persist": op_unit_persist, "unit_logs": op_unit_logs}
