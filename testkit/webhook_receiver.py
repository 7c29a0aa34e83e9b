"""A webhook receiver for egresswatch's tests: appends each POSTed body as one line to
received.jsonl in its directory, and answers 503 while a file named `fail` exists there
(a receiver that is down). Usage: webhook_receiver.py PORT DIR"""
import http.server
import json
import os
import sys
import threading

PORT = int(sys.argv[1])
DIR = sys.argv[2]
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; Nagle's algorithm would hold the second for the
    # client's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if os.path.exists(os.path.join(DIR, "fail")):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        record = {"key": self.headers.get("Idempotency-Key"), "body": json.loads(body)}
        with LOCK:
            with open(os.path.join(DIR, "received.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
