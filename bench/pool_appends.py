#!/usr/bin/env python3
"""Data pool appends on Redis: time of 100 sequential POSTs to one pool (one keep-alive
client), and of 4 clients appending 50 each to one pool at once (their changes contend).

    python3 bench/pool_appends.py PUSH_SERVE_BINARY [REDIS_URL]

Starts the binary on 127.0.0.1 with `redis_url` (default redis://127.0.0.1:6390/0) and a fresh
key prefix, and stops it at the end. Prints medians of 5 (sequential) and 3 (concurrent)
rounds, and checks that every append is in the document.
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

binary = sys.argv[1]
redis_url = sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6390/0"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
prefix = f"poolbench-{os.getpid()}"
conf = os.path.join(tempfile.mkdtemp(), "conf.yaml")
with open(conf, "w") as f:
    f.write(f"addr: 127.0.0.1:{port}\npassword: benchpw\nredis_url: {redis_url}\n"
            f"redis_prefix: {prefix}\n")
daemon = subprocess.Popen([binary, "--config", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def request(conn, method, name, body=None):
    conn.request(method, f"/pool/{name}?password=benchpw", body=body)
    r = conn.getresponse()
    return r.status, r.read()


def appends(name, base, count, refused):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(count):
        status, _ = request(conn, "POST", name, str(base + i))
        if status != 200:
            refused.append(status)


try:
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    # Until the node is subscribed to Redis a change gets 503.
    conn = http.client.HTTPConnection("127.0.0.1", port)
    while request(conn, "PUT", "warm", "[]")[0] != 200 and time.time() < deadline:
        time.sleep(0.1)

    sequential = []
    for round_ in range(5):
        name = f"seq{round_}"
        request(conn, "PUT", name, "[]")
        refused = []
        started = time.perf_counter()
        appends(name, 0, 100, refused)
        sequential.append(time.perf_counter() - started)
        assert not refused, refused

    concurrent, refused = [], []
    for round_ in range(3):
        name = f"conc{round_}"
        request(conn, "PUT", name, "[]")
        clients = [threading.Thread(target=appends, args=(name, k * 1000, 50, refused))
                   for k in range(4)]
        started = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        concurrent.append(time.perf_counter() - started)
        doc = json.loads(request(conn, "GET", name)[1])["contents"]
        assert len(doc) == 200 - len(refused), len(doc)

    print(f"100 sequential appends: median {statistics.median(sequential) * 1000:.0f} ms")
    print(f"4 x 50 concurrent appends: median {statistics.median(concurrent) * 1000:.0f} ms, "
          f"refused {len(refused)}")
finally:
    daemon.terminate()
    daemon.wait()
