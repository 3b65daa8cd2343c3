#!/usr/bin/env python3
"""Demo daemon (imitates `phone_call.py auto`): runs and supervises api.py as its child.

    python3 daemon.py auto --api-port 8770 [--api-log PATH] [--no-restart]
                           [--restart-delay 0.5] [--breaker 5] [--min-uptime 30]

- The API runs as this process's child, in the same process group (stopping the group stops it).
- Its stdout/stderr go to --api-log, opened once and reused for every restart (else inherited).
- It gets an allow-listed environment only (see ALLOWED_ENV); DEMO_TOKEN is never printed.
- When it exits it is restarted after --restart-delay seconds. Circuit breaker: after --breaker
  consecutive runs that each lived less than --min-uptime seconds, log CRITICAL and stop retrying
  (the daemon itself keeps running). --no-restart is a broken variant that never restarts.
- "api ready pid P" is logged each time a (re)started API answers HTTP on its port; the first time,
  "auto-answering" follows: that is the daemon's ready line.
- SIGTERM/SIGINT only set a flag; the main loop then stops the API (TERM, 5 s, KILL), logs
  "daemon stopped" and exits 0.

Stdlib only, python3.8+.
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
API = os.path.join(HERE, "api.py")
POLL = 0.05
STOP_TIMEOUT = 5.0
ALLOWED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "USER",
    "LOGNAME",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "DEMO_TOKEN",
    "DEMO_COMMIT",
    "DEMO_API_FAIL",
)

stop_requested = []  # the signal numbers received; the handler does nothing else


def log(message):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    print("%s.%03d %s" % (stamp, int(now * 1000) % 1000, message), flush=True)


def on_signal(signum, frame):
    stop_requested.append(signum)


def child_env():
    return {key: os.environ[key] for key in ALLOWED_ENV if key in os.environ}


def api_answers(host, port, pid):
    """True if the API on host:port answers HTTP and is OUR child (its /health pid, when it
    reports one, is ``pid``): a stale API from an earlier run holding the port does not count."""
    conn = http.client.HTTPConnection(host, port, timeout=0.5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    try:
        reported = json.loads(body.decode("utf-8")).get("pid")
    except (ValueError, AttributeError):
        reported = None
    return reported is None or reported == pid


class Supervisor:
    def __init__(self, args):
        self.args = args
        self.api_log = open(args.api_log, "ab") if args.api_log else None  # noqa: SIM115
        self.child = None
        self.started_at = 0.0
        self.ready = False
        self.announced = False
        self.short_runs = 0
        self.restart_at = None
        self.gave_up = False

    def spawn(self):
        argv = [sys.executable, API, "--port", str(self.args.api_port)]
        if self.args.api_host != "127.0.0.1":
            argv += ["--host", self.args.api_host]
        if self.args.api_calls_dir:
            argv += ["--calls-dir", self.args.api_calls_dir]
        env = child_env()
        out = self.api_log if self.api_log is not None else None
        self.started_at = time.monotonic()
        self.ready = False
        self.restart_at = None
        try:
            self.child = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True
            )
        except OSError as exc:
            log("cannot start api: %s" % exc)
            self.child = None
            self.on_exit("spawn-error")
            return
        log(
            "api started pid %d (port %d, env: %s)"
            % (self.child.pid, self.args.api_port, ", ".join(sorted(env)))
        )

    def on_exit(self, code):
        lived = time.monotonic() - self.started_at
        self.child = None
        if lived < self.args.min_uptime:
            self.short_runs += 1
        else:
            self.short_runs = 0
        head = "api exited with code %s after %.1fs" % (code, lived)
        if self.args.no_restart:
            log("%s; not restarting (--no-restart)" % head)
            self.gave_up = True
        elif self.short_runs >= self.args.breaker:
            log("%s; not restarting (circuit breaker open)" % head)
            log(
                "CRITICAL api crash loop: %d restarts in a row each lived < %gs; not restarting"
                % (self.short_runs, self.args.min_uptime)
            )
            self.gave_up = True
        else:
            log("%s; restarting in %gs" % (head, self.args.restart_delay))
            self.restart_at = time.monotonic() + self.args.restart_delay

    def tick(self):
        if self.child is not None:
            code = self.child.poll()
            if code is not None:
                self.on_exit(code)
            elif not self.ready and api_answers(
                self.args.api_host, self.args.api_port, self.child.pid
            ):
                self.ready = True
                log("api ready pid %d" % self.child.pid)
                if not self.announced:
                    self.announced = True
                    log("auto-answering")
        elif self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.spawn()

    def stop_child(self):
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        log("stopping api pid %d" % child.pid)
        child.terminate()
        try:
            code = child.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log("api pid %d ignored SIGTERM for %gs; killing it" % (child.pid, STOP_TIMEOUT))
            child.kill()
            code = child.wait()
        log("api pid %d stopped (code %s)" % (child.pid, code))

    def run(self):
        self.spawn()
        while not stop_requested:
            self.tick()
            time.sleep(POLL)
        log("daemon got signal %d; shutting down" % stop_requested[0])
        self.stop_child()
        if self.api_log is not None:
            self.api_log.close()
        log("daemon stopped")
        return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="demo daemon supervising api.py")
    sub = parser.add_subparsers(dest="mode")
    auto = sub.add_parser("auto", help="run and supervise the API")
    auto.add_argument("--api-port", type=int, required=True)
    auto.add_argument("--api-host", default="127.0.0.1")
    auto.add_argument("--api-log", help="append the API's output here (opened once)")
    auto.add_argument("--api-calls-dir", help="the API logs each lookup under this directory")
    auto.add_argument("--no-restart", action="store_true", help="broken variant: never restart")
    auto.add_argument("--restart-delay", type=float, default=0.5)
    auto.add_argument("--breaker", type=int, default=5, help="consecutive short runs to give up")
    auto.add_argument("--min-uptime", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.mode != "auto":
        parser.error("the only mode is: auto")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(
        "daemon starting pid %d (api port %d, breaker %d runs < %gs)"
        % (os.getpid(), args.api_port, args.breaker, args.min_uptime)
    )
    return Supervisor(args).run()


if __name__ == "__main__":
    sys.exit(main())
