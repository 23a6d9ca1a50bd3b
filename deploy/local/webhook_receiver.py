#!/usr/bin/env python3
"""A small webhook receiver for trying iotcore out: prints every request it receives.

Usage: deploy/local/webhook_receiver.py [PORT]   (default 9000, listens on 127.0.0.1)

With WEBHOOK_SECRET set, it also checks the X-Iotcore-Signature header
(t={unix_seconds},v1={hex HMAC-SHA256(secret, "{t}.{body}")}) and prints the result.
"""

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 16 * 1024 * 1024))
        print(f"--- POST {self.path}", flush=True)
        for name in ("X-Iotcore-Message-Id", "X-Iotcore-Rule-Id", "X-Iotcore-Signature"):
            if self.headers.get(name):
                print(f"{name}: {self.headers.get(name)}")
        secret = os.environ.get("WEBHOOK_SECRET")
        if secret and self.headers.get("X-Iotcore-Signature"):
            print(f"signature valid: {signature_valid(secret, self.headers['X-Iotcore-Signature'], body)}")
        try:
            print(json.dumps(json.loads(body), indent=2), flush=True)
        except ValueError:
            print(body.decode("utf-8", "replace"), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


def signature_valid(secret, header, body):
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    expected = hmac.new(secret.encode(), f"{parts.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"webhook receiver listening on http://127.0.0.1:{port}/", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
