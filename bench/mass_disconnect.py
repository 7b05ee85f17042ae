#!/usr/bin/env python3
"""Server CPU per dropped socket in a mass disconnect: start push-serve, open N idle sockets
(one uid each), then drop them all at once (the client process's sockets are closed together,
as a network blip or a load balancer restart does) and read the server's CPU time (user +
system, /proc/<pid>/stat) from the drop until `/stats` says no socket is left.

    python3 bench/mass_disconnect.py [N ...] [--bin path/to/push-serve] [--topic]
        (defaults: 2000 18000, target/release/push-serve)

With --topic every socket also follows one topic (its key grants it), so all N share one
stream besides the broadcast one: the case where a leave that scans its stream's followers
costs the most.

Each N runs in a fresh server. Standard library only; the sockets are held by a child process
(so closing them is one exit) and N must stay under the open-files limit (raised to the hard
limit here)."""
import json, os, resource, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_server import LocalServer

args = sys.argv[1:]
binary = "target/release/push-serve"
if "--bin" in args:
    i = args.index("--bin")
    binary = args[i + 1]
    del args[i : i + 2]
topic = "--topic" in args
if topic:
    args.remove("--topic")
counts = [int(a) for a in args] or [2000, 18000]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
password = "mass-disconnect-bench"
ticks = os.sysconf("SC_CLK_TCK")

HOLDER = r"""
import base64, hashlib, hmac, socket, sys, time
port, n, password, topic = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
secret = hashlib.sha256(b"push-serve access-key v1\0" + password.encode()).digest()
expiry = int(time.time()) + 3600
held = []

def key(uid):
    if not topic:
        mac = hmac.new(secret, f"v1\n{uid}\n{expiry}".encode(), hashlib.sha256).digest()[:16]
        return f"v1.{expiry}.{mac.hex()}"
    topics = base64.urlsafe_b64encode(topic.encode()).decode().rstrip("=")
    text = f"v2\n{uid}\n{expiry}\n{topics}"
    mac = hmac.new(secret, text.encode(), hashlib.sha256).digest()[:16]
    return f"v2.{expiry}.{topics}.{mac.hex()}"

for i in range(n):
    uid = f"drop-{i}"
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /ws?uid={uid}&access_key={key(uid)} HTTP/1.1\r\nHost: b\r\n"
              "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


def run(n):
    extra = f"heartbeat_interval_secs: 600\nmax_sockets: {n + 100}\n"
    with LocalServer(binary, password, extra) as server:
        port = server.port

        def sockets():
            url = f"http://127.0.0.1:{port}/stats?password={password}"
            with urllib.request.urlopen(url) as r:
                return json.load(r)["contents"]["sockets"]

        def cpu_secs():
            with open(f"/proc/{server.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(port), str(n), password,
                                   "crowd" if topic else ""],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "ready"
        while sockets() < n:
            time.sleep(0.1)
        time.sleep(1)
        before, started = cpu_secs(), time.monotonic()
        holder.stdin.close()  # the holder exits: every socket closes at once
        holder.wait()
        while sockets() > 0:
            time.sleep(0.02)
            if time.monotonic() - started > 60:
                raise SystemExit("sockets still open after 60 s")
        time.sleep(0.5)
        spent = cpu_secs() - before
        what = " (all following one topic)" if topic else ""
        print(f"{n} sockets{what} dropped at once: server CPU {spent * 1000:.0f} ms, "
              f"{spent * 1e6 / n:.1f} us per socket")


for n in counts:
    run(n)
