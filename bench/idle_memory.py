#!/usr/bin/env python3
"""Server RSS per idle WebSocket: start push-serve, open N idle sockets (one uid each, keys
computed locally per the access-key format), wait, read VmRSS, report (RSS - baseline) / N.

    python3 bench/idle_memory.py [N] [path/to/push-serve]     (defaults: 10000, target/release/push-serve)

Standard library only. The client side holds N sockets, so N must stay under this process's
open-files limit (raised here to the hard limit)."""
import os, resource, socket, sys, time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/push-serve"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_server import LocalServer

with LocalServer(binary, "idle-memory-bench", "heartbeat_interval_secs: 600\n") as server:
    port = server.port

    def rss_kib():
        with open(f"/proc/{server.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

    time.sleep(0.5)
    base = rss_kib()
    sockets = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        uid = f"idle-{i}"
        s.sendall(
            f"GET /ws?uid={uid}&access_key={server.key(uid)} HTTP/1.1\r\nHost: bench\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        sockets.append(s)
    time.sleep(3)
    rss = rss_kib()
    print(f"{n} idle sockets: baseline {base} KiB, RSS {rss} KiB, "
          f"{(rss - base) / n:.2f} KiB per socket")
