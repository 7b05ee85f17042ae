"""Issue 19's figures, measured again: what strangers can make a push-serve hold.

    python3 bench/hostile.py [BINARY]      (default target/release/push-serve)

1. 150 stalled bodies: POSTs that send their headers and the first bytes of a 1 MiB body, then
   nothing. To the Pusher HTTP API with only the public app key (no valid signature), and to
   /push with the right password (only a backend has it). RSS before, while they stall, and
   after the body deadline; how many the server closed.
2. Pusher sockets following as many public channels as they may: server RSS per socket with
   0 channels and with max_channels_per_socket (100), and what a socket asking for 1,000 gets.

Standard library only; everything it starts is stopped when it ends."""
import base64, json, os, socket, sys, time

sys.path.insert(0, os.path.dirname(__file__))
from local_server import LocalServer  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/push-serve"
PASSWORD = "hostile-bench-password"
APP = """pusher:
  apps:
    - id: "1"
      key: app-key
      secret: app-secret
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stalled(port, path, n=150):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {1 << 20}\r\n\r\n").encode() + b"{" + b" " * 4096)
        s.setblocking(False)
        socks.append(s)
    return socks


def closed(socks):
    n = 0
    for s in socks:
        try:
            data = s.recv(65536)
            n += 1 if data == b"" or data.startswith(b"HTTP/1.1 4") else 0
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def ws_connect(port, path):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    return s


def ws_send(s, text):
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    else:
        head += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def drain(s, seconds=0.2):
    s.settimeout(seconds)
    out = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, BlockingIOError):
        pass
    return out


def main():
    result = {}
    extra = APP + "body_timeout_secs: 30\nmax_sockets_per_address: 100000\n"
    with LocalServer(BIN, PASSWORD, extra) as srv:
        time.sleep(0.5)
        for name, path in [("pusher_api_public_key_only",
                            "/apps/1/events?auth_key=app-key&auth_timestamp=1&auth_version=1.0"
                            "&body_md5=x&auth_signature=bad"),
                           ("push_with_password", f"/push?uid=u&password={PASSWORD}")]:
            before = rss_kib(srv.pid)
            socks = stalled(srv.port, path)
            time.sleep(3)
            held = rss_kib(srv.pid)
            closed_early = closed(socks)
            waited = 0
            while closed(socks) + closed_early < len(socks) and waited < 45:
                time.sleep(1)
                waited += 1
                closed_early += closed(socks)
            after = rss_kib(srv.pid)
            result[name] = {"stalled": len(socks), "rss_before_kib": before,
                            "rss_while_stalled_kib": held, "rss_after_kib": after,
                            "closed_by_server": min(closed_early, len(socks)),
                            "secs_until_all_closed": 3 + waited}
            for s in socks:
                s.close()
            time.sleep(0.5)
        # Pusher sockets and channels.
        n = 200
        base = rss_kib(srv.pid)
        plain = [ws_connect(srv.port, "/app/app-key?protocol=7") for _ in range(n)]
        for s in plain:
            drain(s, 0.01)
        time.sleep(1)
        with_sockets = rss_kib(srv.pid)
        subscribed = [ws_connect(srv.port, "/app/app-key?protocol=7") for _ in range(n)]
        for i, s in enumerate(subscribed):
            drain(s, 0.01)
            for c in range(100):
                ws_send(s, json.dumps({"event": "pusher:subscribe",
                                       "data": {"channel": f"ch-{i}-{c}"}}))
        time.sleep(2)
        for s in subscribed:
            drain(s, 0.01)
        with_channels = rss_kib(srv.pid)
        greedy = ws_connect(srv.port, "/app/app-key?protocol=7")
        drain(greedy, 0.1)
        for c in range(1000):
            ws_send(greedy, json.dumps({"event": "pusher:subscribe",
                                        "data": {"channel": f"greedy-{c}"}}))
        time.sleep(2)
        replies = drain(greedy, 1.0).decode("utf-8", "replace")
        result["pusher_channels"] = {
            "sockets": n,
            "rss_base_kib": base,
            "kib_per_socket_no_channel": round((with_sockets - base) / n, 2),
            "kib_per_socket_100_channels": round((with_channels - with_sockets) / n, 2),
            "greedy_socket_asked": 1000,
            "greedy_subscribed": replies.count("subscription_succeeded"),
            "greedy_refused": replies.count("pusher:subscription_error")
            + replies.count('"code":4301'),
        }
        for s in plain + subscribed + [greedy]:
            s.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
