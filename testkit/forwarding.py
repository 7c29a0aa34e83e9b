"""What testkit's layers in front of moto share: passing a request on to moto and answering
with what it said. Each layer (aws_behaviour.py, cloudwatch_quota.py) decides what to inject
before or after; this is only the wire."""
import http.client
import http.server

# Hop-by-hop headers and the length, which the answer sets again for the body it sends.
DROPPED = ("transfer-encoding", "connection", "content-length")


def upstream(to, method, path, headers, body):
    """Sends the request to `to` (a parsed URL) and returns its status, headers and body."""
    conn = http.client.HTTPConnection(to.hostname, to.port, timeout=120)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    out = {k: v for k, v in r.getheaders() if k.lower() not in DROPPED}
    conn.close()
    return r.status, out, data


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (40 ms a call).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
