#!/usr/bin/env python3
"""Demo worker (imitates the trading agent of runbook 3): writes a heartbeat file.

    python3 worker.py [--heartbeat PATH] [--interval 1.0] [--freeze-after S]

Prints "worker ready pid P", then writes {"unix_ts": <time.time()>, "pid": P} to PATH at once and
every --interval seconds, atomically (temporary file + os.replace). With --freeze-after S it stops
writing the heartbeat after S seconds but keeps running: a frozen process for supervisors to
catch. Exits 0 on SIGTERM/SIGINT. Stdlib only, python3.8+.
"""

import argparse
import json
import os
import signal
import sys
import time

stop_requested = []


def log(message):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    print("%s.%03d %s" % (stamp, int(now * 1000) % 1000, message), flush=True)


def on_signal(signum, frame):
    stop_requested.append(signum)


def write_heartbeat(path, pid):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = "%s.tmp.%d" % (path, pid)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"unix_ts": time.time(), "pid": pid}, fh)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="demo worker writing a heartbeat")
    parser.add_argument("--heartbeat", help="heartbeat JSON file to write")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--freeze-after", type=float, default=None)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid = os.getpid()
    started = time.monotonic()
    log("worker ready pid %d" % pid)
    next_beat = started
    frozen = False
    while not stop_requested:
        now = time.monotonic()
        if not frozen and args.freeze_after is not None and now - started >= args.freeze_after:
            frozen = True
            log("worker frozen: no more heartbeats (still running)")
        if not frozen and now >= next_beat:
            if args.heartbeat:
                write_heartbeat(args.heartbeat, pid)
            next_beat = now + args.interval
        time.sleep(min(0.05, args.interval))
    log("worker stopped (signal %d)" % stop_requested[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
