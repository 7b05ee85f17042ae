"""push-serve's Pusher HTTP API driven by the PyPI `pusher` SDK. Run by tests/pusher.rs:
    python3 sdk.py <host:port> <socket_id of a socket subscribed to py-room>
Prints "ok: <step>" per step and "python sdk: ok" at the end; exits 1 on the first failure."""

import sys

import pusher
from pusher.errors import PusherBadAuth, PusherBadRequest

host, port = sys.argv[1].split(":")
socket_id = sys.argv[2]
client = pusher.Pusher(app_id="1001", key="app-key", secret="app-secret",
                       host=host, port=int(port), ssl=False)


def step(name):
    print("ok: " + name, flush=True)


# Triggers: one channel, several, and a batch; the socket gets exactly one (the first).
client.trigger("py-room", "from-python", {"n": 1})
client.trigger(["py-a", "py-b"], "wide", {"n": 2})
client.trigger_batch([
    {"channel": "py-a", "name": "b1", "data": {"x": 1}},
    {"channel": "py-b", "name": "b2", "data": {"x": 2}},
])
# Excluded: the socket must not get this one (the Rust side checks what it got).
client.trigger("py-room", "excluded", {"n": 3}, socket_id=socket_id)
step("trigger, trigger to several channels, trigger_batch, socket_id exclusion")

info = client.channels_info()
assert "py-room" in info["channels"], info
one = client.channel_info("py-room", ["subscription_count"])
assert one["occupied"] is True and one["subscription_count"] == 1, one
step("channels_info and channel_info")

try:
    client.users_info("py-room")
    sys.exit("users_info on a public channel was accepted")
except PusherBadRequest:
    pass
step("users_info refuses a non-presence channel with 400")

client.terminate_user_connections("nobody")
step("terminate_user_connections")

wrong = pusher.Pusher(app_id="1001", key="app-key", secret="not-the-secret",
                      host=host, port=int(port), ssl=False)
try:
    wrong.trigger("py-room", "forged", {})
    sys.exit("a wrong secret was accepted")
except PusherBadAuth:
    pass
step("a wrong secret raises PusherBadAuth (401)")

print("python sdk: ok")
