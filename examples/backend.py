#!/usr/bin/env python3
"""A tiny business backend for examples/page.html (Python 3 standard library only).

    PUSH_PASSWORD=... python3 examples/backend.py
    # then open http://127.0.0.1:8081/?uid=alice

It serves the page at /, and the two calls the page makes to its own backend:
  GET  /push-key?uid=UID    a fresh access key for UID (asked from push-serve's /access)
  POST /demo-push?uid=UID   pushes a demo message to UID (push-serve's /push)
The backend password never reaches the page: it is sent to push-serve only, in an
Authorization header. In a real application the uid comes from the user's session, never from
the query string as here.

Environment: PUSH_PASSWORD (required: push-serve's `password`), PUSH_URL (default
http://127.0.0.1:8080, where the backend reaches push-serve), PUSH_PUBLIC_URL (default PUSH_URL,
where browsers reach it), LISTEN (default 127.0.0.1:8081).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASSWORD = os.environ.get("PUSH_PASSWORD", "")
if not PASSWORD:
    sys.exit("set PUSH_PASSWORD to push-serve's password (see conf.yaml)")
PUSH_URL = os.environ.get("PUSH_URL", "http://127.0.0.1:8080").rstrip("/")
PUBLIC_URL = os.environ.get("PUSH_PUBLIC_URL", PUSH_URL).rstrip("/")
HOST, _, PORT = os.environ.get("LISTEN", "127.0.0.1:8081").rpartition(":")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


def push_serve(method, path, body=None):
    """Calls push-serve; returns (status, envelope)."""
    request = urllib.request.Request(
        PUSH_URL + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": "Bearer " + PASSWORD, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


class Backend(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            with open(PAGE, "rb") as f:
                # Tells the page where browsers reach push-serve.
                page = f.read().replace(b"__PUSH_SERVE__", PUBLIC_URL.encode())
            return self.reply(200, page, "text/html; charset=utf-8")
        if url.path == "/push-key":
            uid = self.uid(url)
            status, envelope = push_serve("GET", "/access?uid=" + urllib.parse.quote(uid, safe=""))
            if status != 200:
                return self.reply(502, envelope["contents"].encode(), "text/plain; charset=utf-8")
            return self.reply(200, envelope["contents"].encode(), "text/plain; charset=utf-8")
        self.reply(404, b"not found", "text/plain")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/demo-push":
            return self.reply(404, b"not found", "text/plain")
        uid = self.uid(url)
        message = {"topic": "demo", "contents": {"text": "hello from the backend", "at": time.time()}}
        status, envelope = push_serve("POST", "/push?uid=" + urllib.parse.quote(uid, safe=""), message)
        self.reply(200, json.dumps({"status": status, "reply": envelope}).encode(), "application/json")

    def uid(self, url):
        return urllib.parse.parse_qs(url.query).get("uid", ["alice"])[0]

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One line per request, without query strings (they carry uids).
        sys.stderr.write("backend: %s %s\n" % (self.command, self.path.split("?")[0]))


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, int(PORT)), Backend)
    host, port = server.server_address[:2]
    print("backend on http://%s:%s/ (push-serve at %s)" % (host, port, PUBLIC_URL), flush=True)
    server.serve_forever()
