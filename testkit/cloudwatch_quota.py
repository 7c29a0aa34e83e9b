"""A proxy in front of moto that counts CloudWatch Logs calls by operation and holds them to
AWS's per-account, per-region request quotas, which moto does not enforce: a call over its
operation's quota within any one-second window is answered with ThrottlingException ("Rate
exceeded"), as AWS answers it, and journalled with the quota's source. Every other request is
passed to moto unchanged.

Source: logs/latest/userguide/cloudwatch_limits_cwl.html (GetLogEvents 25/s, 10/s in
us-west-2, eu-west-1, eu-central-1 and others; DescribeLogStreams 25/s).

Usage: cloudwatch_quota.py PORT UPSTREAM DIR QUOTAS_JSON
  QUOTAS_JSON: calls per second by operation, e.g. {"GetLogEvents": 10}; operations not named
  are counted, never throttled.
Files: DIR/calls.json     {"calls": {op: n}, "throttled": {op: n}}, rewritten after each call
       DIR/journal.jsonl  one line per injected throttle: {"behaviour", "action", "source"}
"""
import collections
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

import forwarding

PORT = int(sys.argv[1])
UPSTREAM = urllib.parse.urlparse(sys.argv[2])
DIR = sys.argv[3]
QUOTAS = json.loads(sys.argv[4])
SOURCE = "logs/latest/userguide/cloudwatch_limits_cwl.html"

LOCK = threading.Lock()
calls = collections.Counter()
throttled = collections.Counter()
recent = collections.defaultdict(collections.deque)  # op -> times of calls let through


def save():
    tmp = os.path.join(DIR, "calls.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"calls": calls, "throttled": throttled}, f)
    os.replace(tmp, os.path.join(DIR, "calls.json"))


def admit(op):
    """Counts the call; False when it is over its operation's quota."""
    with LOCK:
        calls[op] += 1
        quota = QUOTAS.get(op)
        ok = True
        if quota is not None:
            now = time.monotonic()
            window = recent[op]
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= quota:
                ok = False
                throttled[op] += 1
                with open(os.path.join(DIR, "journal.jsonl"), "a") as f:
                    f.write(json.dumps({"behaviour": "cloudwatch-quota", "action": op, "source": SOURCE, "quota_per_second": quota}) + "\n")
            else:
                window.append(now)
        save()
        return ok


class Handler(forwarding.Handler):
    def forward(self, method, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        self.answer(*forwarding.upstream(UPSTREAM, method, self.path, headers, body))

    def do_GET(self):
        self.forward("GET", None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        target = self.headers.get("X-Amz-Target", "")
        if target.startswith("Logs_20140328."):
            op = target.split(".", 1)[1]
            if not admit(op):
                reply = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                self.answer(400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": "ThrottlingException"}, reply)
                return
        self.forward("POST", body)


with LOCK:
    save()
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
