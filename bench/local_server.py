"""What bench/idle_memory.py and bench/mass_disconnect.py share: a push-serve started on a free
loopback port with a config of their own, and its access keys computed locally (the `v1` key
format, see src/auth.rs). Standard library only."""
import hashlib, hmac, os, socket, subprocess, tempfile, time


class LocalServer:
    """`with LocalServer(binary, password, extra_yaml) as server:` runs push-serve until the
    block ends; `server.port`, `server.pid`, `server.key(uid)`."""

    def __init__(self, binary, password, extra_yaml=""):
        self.binary, self.password, self.extra = binary, password, extra_yaml
        secret = hashlib.sha256(b"push-serve access-key v1\0" + password.encode()).digest()
        self.secret, self.expiry = secret, int(time.time()) + 3600

    def __enter__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        conf = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        conf.write(f"addr: 127.0.0.1:{self.port}\npassword: {self.password}\n{self.extra}")
        conf.close()
        self.conf = conf.name
        self.process = subprocess.Popen([self.binary, "--config", conf.name],
                                        stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait()
        os.unlink(self.conf)

    def key(self, uid):
        text = f"v1\n{uid}\n{self.expiry}".encode()
        mac = hmac.new(self.secret, text, hashlib.sha256).digest()[:16]
        return f"v1.{self.expiry}.{mac.hex()}"
