#!/usr/bin/env python3
"""Demo HTTP API (imitates phone_api.py): a health check and a token-protected contact lookup.

    python3 api.py --port 8770 [--host 127.0.0.1] [--calls-dir DIR]

GET /health               -> 200 {"status": "ok", "commit": C, "pid": P}
                             (500 {"status": "failing"} when DEMO_API_FAIL=1: a broken variant)
GET /v1/lookup?name=NAME  -> needs header X-Demo-Token == $DEMO_TOKEN;
                             200 {"name", "number"} | 404 unknown name | 401 {"error": "bad token"}

With --calls-dir, every answered lookup is appended as a JSON line (time, name, status; never the
token) to DIR/api-calls-YYYYMMDD.jsonl, the call log a runbook step checks after one unit of work.

The commit is $DEMO_COMMIT, else the first line of ./REVISION, else `git rev-parse HEAD` in the
current directory, else "unknown". Stdlib only, python3.8+. The token is never printed.
"""

import argparse
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CONTACTS = {
    "alice": "+1-555-0100",
    "bob": "+1-555-0101",
    "carol": "+44-20-7946-0102",
    "mom": "+1-555-0199",
}


def log(message):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    print("%s.%03d %s" % (stamp, int(now * 1000) % 1000, message), flush=True)


def find_commit():
    commit = os.environ.get("DEMO_COMMIT", "").strip()
    if commit:
        return commit
    try:
        with open("REVISION", encoding="utf-8") as fh:
            first = fh.readline().strip()
        if first:
            return first
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=True,
        )
        commit = out.stdout.decode("ascii", "replace").strip()
        if commit:
            return commit
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-api/1.0"
    protocol_version = "HTTP/1.1"

    def send_json(self, code, payload):
        body = (json.dumps(payload) + "\n").encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            if os.environ.get("DEMO_API_FAIL") == "1":
                self.send_json(500, {"status": "failing"})
            else:
                self.send_json(
                    200, {"status": "ok", "commit": self.server.commit, "pid": os.getpid()}
                )
        elif url.path == "/v1/lookup":
            self.lookup(parse_qs(url.query))
        else:
            self.send_json(404, {"error": "not found"})

    def lookup(self, query):
        expected = os.environ.get("DEMO_TOKEN", "")
        given = self.headers.get("X-Demo-Token", "")
        if not expected or not hmac.compare_digest(
            given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
        ):
            self.send_json(401, {"error": "bad token"})
            return
        name = (query.get("name") or [""])[0].strip()
        if not name:
            self.send_json(400, {"error": "missing name"})
            return
        number = CONTACTS.get(name.lower())
        if number is None:
            self.record_call(name, 404)
            self.send_json(404, {"error": "unknown name", "name": name})
            return
        self.record_call(name, 200)
        self.send_json(200, {"name": name, "number": number})

    def record_call(self, name, status):
        calls_dir = self.server.calls_dir
        if not calls_dir:
            return
        os.makedirs(calls_dir, exist_ok=True)
        path = os.path.join(calls_dir, time.strftime("api-calls-%Y%m%d.jsonl"))
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"ts": time.time(), "name": name, "status": status}) + "\n")

    def log_request(self, code="-", size="-"):
        # One short line per request; never headers (the token travels in a header).
        code = getattr(code, "value", code)
        log("%s %s %s %s" % (self.client_address[0], self.command, self.path, code))

    def log_message(self, format, *args):
        log("%s %s" % (self.client_address[0], format % args))


def main(argv=None):
    parser = argparse.ArgumentParser(description="demo HTTP API")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--calls-dir", help="append each answered lookup to DIR/api-calls-YYYYMMDD.jsonl")
    args = parser.parse_args(argv)

    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as exc:
        log("cannot listen on %s:%d: %s" % (args.host, args.port, exc))
        return 1
    server.daemon_threads = True
    server.commit = find_commit()
    server.calls_dir = os.path.abspath(args.calls_dir) if args.calls_dir else None

    stop = []  # the handler only appends: Event.set() in a handler can deadlock on its own lock

    def on_signal(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    log("api listening on %s:%d pid %d" % (args.host, args.port, os.getpid()))
    log("api commit %s" % server.commit)
    while not stop:
        time.sleep(0.1)
    log("api stopping (signal)")
    server.shutdown()
    server.server_close()
    log("api stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
