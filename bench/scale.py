#!/usr/bin/env python3
"""The scale run (issue 20): N push-serve nodes on one Redis (or a Redis Cluster) on this
machine, and `push-bench hold` processes holding up to the open-files limit each, from loopback
source addresses 127.0.0.x. Phases, each bounded in time:

  connect    every socket opens (proto=2; socket i is uid s<i> on node i % N): time to all,
             memory per socket split into push-serve (RSS over nodes), the kernel (slab and TCP
             buffers, for both ends of each loopback pair), Redis (used_memory), load side
  queries    /stats on every node (cluster-wide sockets must reach the total), /online for
             random connected and absent uids (must be exact)
  rest       CPU of nodes, Redis and holders with every socket idle (heartbeats, liveness)
  broadcast  one POST /broadcast: time to first, median, last delivery; nothing lost
  unicast    `push-bench scale-push` at a fixed rate to random uids, each pushed to a node that
             is not the uid's: p50/p99/p99.9 push->receive, every accepted push received once
  storm      every socket dropped at once while pushes go on, then all back with `since`:
             how long until all are back, nothing lost, nothing twice
  kill       a node SIGKILLed under pushes: its sockets come back on the others and resume

Redis CPU, commands/s and the busiest commands are taken around every phase. Everything it
starts is killed on exit (also on Ctrl-C, an error, or the driver being killed: children get
PR_SET_PDEATHSIG). Standard library only.

    python3 bench/scale.py [--sockets N] [--nodes N] [--full] [--cluster] [--out FILE] ...
    (bash bench/scale.sh builds the binaries, raises the open-files limit and runs this)
"""
import argparse, ctypes, json, math, os, random, shutil, signal, socket, subprocess, sys
import tempfile, threading, time, urllib.error, urllib.request

PASSWORD = "scale-bench-password"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PAGE = 4096
TICKS = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- processes and cleanup

_libc = ctypes.CDLL(None, use_errno=True)
CHILDREN = []  # (name, Popen), killed in reverse order on exit
TMP = None


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the driver


def spawn(name, argv, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.Popen(argv, preexec_fn=_die_with_parent, **kw)
    CHILDREN.append((name, p))
    return p


def cleanup():
    for _, p in reversed(CHILDREN):
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    deadline = time.monotonic() + 5
    for _, p in reversed(CHILDREN):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    CHILDREN.clear()
    if TMP and not os.environ.get("SCALE_KEEP_TMP"):
        shutil.rmtree(TMP, ignore_errors=True)


def _on_signal(signum, _frame):
    raise SystemExit(f"scale: signal {signum}, cleaning up")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port():
    """A port that is free with its cluster bus port (+10,000, so at most 55,535)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise SystemExit("scale: no free port pair for a Redis Cluster node")


def wait_port(port, proc, what, secs=20):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"scale: {what} exited at start (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"scale: {what} did not listen on {port} within {secs} s")


# ---------------------------------------------------------------- /proc readings


def proc_stat(pid):
    """(rss KiB, cpu seconds) of a process, (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
        return rss, (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, StopIteration):
        return 0, 0.0


def group(pids):
    rss = cpu = 0
    for pid in pids:
        r, c = proc_stat(pid)
        rss, cpu = rss + r, cpu + c
    return {"rss_kib": rss, "cpu_s": cpu}


SOCKET_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi",
                 "eventpoll_pwq", "tcp_bind_bucket", "tcp_bind2_bucket", "skbuff_head_cache",
                 "skbuff_small_head", "request_sock_TCP", "ep_head")


def kernel():
    """Kernel memory that sockets take: slab (all of it, and the socket caches by name) and
    TCP buffer pages (sockstat), in KiB; plus the machine's MemAvailable."""
    mi = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            mi[k] = int(v.split()[0])
    out = {"slab_kib": mi["Slab"], "sunreclaim_kib": mi["SUnreclaim"],
           "mem_available_kib": mi["MemAvailable"], "page_tables_kib": mi.get("PageTables", 0)}
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()
                d = dict(zip(w[1::2], map(int, w[2::2])))
                out["tcp_inuse"], out["tcp_tw"] = d["inuse"], d["tw"]
                out["tcp_mem_kib"] = d["mem"] * PAGE // 1024
    caches = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f.readlines()[2:]:
                w = line.split()
                if w[0] in SOCKET_CACHES:
                    caches[w[0]] = int(w[1]) * int(w[3]) // 1024
    except OSError:
        pass
    out["socket_caches_kib"] = caches
    with open("/proc/sys/fs/file-nr") as f:
        out["files_open"] = int(f.read().split()[0])
    return out


def machine_cpu_s():
    """CPU seconds the whole machine spent busy (every core, /proc/stat)."""
    with open("/proc/stat") as f:
        w = f.readline().split()[1:]
    v = list(map(int, w))
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / TICKS


def sysctls():
    names = ["fs.file-max", "fs.nr_open", "net.core.somaxconn", "net.ipv4.ip_local_port_range",
             "net.ipv4.tcp_mem", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
             "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_max_orphans", "net.netfilter.nf_conntrack_max"]
    out = {}
    for n in names:
        try:
            with open("/proc/sys/" + n.replace(".", "/")) as f:
                out[n] = " ".join(f.read().split())
        except OSError:
            out[n] = None
    return out


def machine():
    info = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    with open("/proc/meminfo") as f:
        info["mem_total_kib"] = int(f.readline().split()[1])
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f
                                      if l.startswith("model name")), None)
    except OSError:
        pass
    import resource
    info["nofile_hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        info["commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        info["loadavg_at_start"] = f.read().split()[:3]
    return info


# ---------------------------------------------------------------- Redis


def redis_cmd(port, *args, timeout=10):
    """One command over RESP; returns the reply (str, int, list or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        req = f"*{len(args)}\r\n" + "".join(f"${len(str(a).encode())}\r\n{a}\r\n" for a in args)
        s.sendall(req.encode())
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            t, rest = line[:1], line[1:]
            if t == b"+":
                return rest.decode()
            if t == b"-":
                raise RuntimeError(rest.decode())
            if t == b":":
                return int(rest)
            if t == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)[:-2]
                return data.decode(errors="replace")
            if t == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"bad reply {line!r}")

        return read()


def redis_info(port):
    # A loaded machine (a broadcast to 769,240 sockets on two cores) kept one answer waiting
    # past 10 s and aborted the run: measuring must not be what gives up first.
    text = redis_cmd(port, "INFO", "all", timeout=60)
    info, cmds = {}, {}
    for line in text.splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        k, v = line.split(":", 1)
        if k.startswith("cmdstat_"):
            d = dict(kv.split("=") for kv in v.split(","))
            cmds[k[8:]] = int(d["calls"])
        else:
            info[k] = v
    return {"used_memory": int(info["used_memory"]),
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "commands": int(info["total_commands_processed"]),
            "cmds": cmds}


class Redis:
    """One redis-server, or a cluster of 3 masters + 3 replicas; INFO summed over instances."""

    def __init__(self, cluster):
        self.cluster, self.ports, self.procs = cluster, [], []
        n = 6 if cluster else 1
        for i in range(n):
            port = free_cluster_port() if cluster else free_port()
            d = os.path.join(TMP, f"redis-{port}")
            os.makedirs(d)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", d, "--protected-mode", "no",
                    "--maxmemory-policy", "noeviction", "--logfile", os.path.join(d, "log")]
            if cluster:
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", "5000"]
            p = spawn(f"redis-{port}", argv)
            wait_port(port, p, "redis-server")
            self.ports.append(port)
            self.procs.append(p)
        if cluster:
            subprocess.run(["redis-cli", "--cluster", "create"]
                           + [f"127.0.0.1:{p}" for p in self.ports]
                           + ["--cluster-replicas", "1", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while True:
                states = [redis_cmd(p, "CLUSTER", "INFO") for p in self.ports]
                if all("cluster_state:ok" in s for s in states):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("scale: the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.2)
            self.masters = [p for p in self.ports
                            if "role:master" in redis_cmd(p, "INFO", "replication")]

    def config_yaml(self):
        if self.cluster:
            seeds = ", ".join(f"redis://127.0.0.1:{p}" for p in self.masters)
            return f"redis_cluster: [{seeds}]\n"
        return f"redis_url: redis://127.0.0.1:{self.ports[0]}/0\n"

    def snapshot(self):
        total = {"used_memory": 0, "cpu_s": 0.0, "commands": 0, "cmds": {}, "per_instance": []}
        for p in self.ports:
            i = redis_info(p)
            total["used_memory"] += i["used_memory"]
            total["cpu_s"] += i["cpu_s"]
            total["commands"] += i["commands"]
            for k, v in i["cmds"].items():
                total["cmds"][k] = total["cmds"].get(k, 0) + v
            total["per_instance"].append({"port": p, "cpu_s": i["cpu_s"],
                                          "commands": i["commands"]})
        return total


# ---------------------------------------------------------------- nodes and holders


class Node:
    def __init__(self, i, binary, redis, extra):
        self.i, self.port = i, free_port()
        self.conf = os.path.join(TMP, f"node-{i}.yaml")
        with open(self.conf, "w") as f:
            f.write(f"addr: 127.0.0.1:{self.port}\npassword: {PASSWORD}\n"
                    f"{redis.config_yaml()}log_level: warn\n{extra}")
        self.log = os.path.join(TMP, f"node-{i}.log")
        self.proc = spawn(f"node-{i}", [binary, "--config", self.conf],
                          stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.pid, self.killed = self.proc.pid, False

    def wait(self):
        try:
            wait_port(self.port, self.proc, f"node {self.i}")
        except SystemExit:
            with open(self.log) as f:
                sys.stderr.write(f.read()[-2000:])
            raise

    def get(self, path, timeout=10):
        url = f"http://127.0.0.1:{self.port}{path}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {PASSWORD}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {PASSWORD}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


class Holder:
    def __init__(self, h, bench, nodes, first, count, concurrency):
        self.h, self.first, self.count = h, first, count
        addrs = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
        base = 2 + (h * 8) % 240
        self.proc = spawn(f"holder-{h}", [bench, "hold", "--nodes", addrs, "--password", PASSWORD,
                                          "--count", str(count), "--first", str(first),
                                          "--prefix", "s", "--concurrency", str(concurrency),
                                          "--sources", "8", "--source-base", str(base),
                                          "--proto", "2"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.proc.pid

    def ready(self):
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"scale: holder {self.h} said {line!r}")
        head, _, error = line.partition(" error=")
        d = dict(w.split("=", 1) for w in head.split()[1:])
        return {"ok": int(d["ok"]), "failed": int(d["failed"]), "secs": float(d["secs"]),
                "error": error.strip()}

    def send(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def reply(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"scale: holder {self.h} ended (status {self.proc.poll()})")
        return json.loads(line)


def all_holders(holders, cmd):
    for h in holders:
        h.send(cmd)
    return [h.reply() for h in holders]


def merge_stats(replies):
    out = {}
    for r in replies:
        for k, v in r.items():
            if k.endswith("_us"):
                out.setdefault(k, {})
                for value, count in v:
                    out[k][value] = out[k].get(value, 0) + count
            elif k == "close_codes":
                out.setdefault(k, {})
                for code, n in v.items():
                    out[k][code] = out[k].get(code, 0) + n
            elif k in ("first_close_ns",):
                nz = [x for x in [out.get(k, 0), v] if x]
                out[k] = min(nz) if nz else 0
            elif k == "last_connect_ns":
                out[k] = max(out.get(k, 0), v)
            elif k == "first_error":
                out[k] = out.get(k) or v
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    return out


def percentiles(buckets, qs=(0.5, 0.99, 0.999)):
    """{"min","p50",...,"max","count"} in ms from {value_us: count}."""
    items = sorted(buckets.items())
    total = sum(c for _, c in items)
    if not total:
        return {"count": 0}
    out = {"count": total, "min": items[0][0] / 1000, "max": items[-1][0] / 1000}
    for q in qs:
        rank, seen = max(1, math.ceil(q * total)), 0
        for v, c in items:
            seen += c
            if seen >= rank:
                out[f"p{q * 100:g}"] = v / 1000
                break
    return out


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args):
        self.a = args
        self.result = {"machine": machine(), "sysctl": sysctls(), "args": vars(args),
                       "phases": {}, "problems": [], "connect_waves": []}
        self.deadline = time.monotonic() + args.max_secs

    def left(self):
        return self.deadline - time.monotonic()

    def check_time(self, what):
        if self.left() < 0:
            raise SystemExit(f"scale: --max-secs passed before {what}")

    def problem(self, text):
        log("PROBLEM: " + text)
        self.result["problems"].append(text)

    def live_nodes(self):
        return [n for n in self.nodes if not n.killed]

    def sample(self, before):
        """A short record of the machine since `before` (a meter()): CPU by group, Redis load
        and latency, memory, and whether nodes lost Redis (their logs)."""
        now = self.meter()
        dt = now["t"] - before["t"]
        t = time.monotonic()
        redis_cmd(self.redis.ports[0], "PING", timeout=30)
        ping_ms = (time.monotonic() - t) * 1000
        lines = 0
        for n in self.nodes:
            with open(n.log, errors="replace") as f:
                lines += sum("redis unreachable" in l for l in f)
        cpu = lambda g: round(100 * (now[g]["cpu_s"] - before[g]["cpu_s"]) / dt, 1)
        return {"secs": round(dt, 1), "nodes_cpu_pct": cpu("nodes"), "holders_cpu_pct": cpu("holders"),
                "redis_cpu_pct": round(100 * (now["redis"]["cpu_s"] - before["redis"]["cpu_s"]) / dt, 1),
                "redis_commands_per_s": round((now["redis"]["commands"] - before["redis"]["commands"]) / dt),
                "machine_cpu_pct": round(100 * (now["machine_cpu_s"] - before["machine_cpu_s"]) / dt, 1),
                "pid1_cpu_pct": round(100 * (now["pid1_cpu_s"] - before["pid1_cpu_s"]) / dt, 1),
                "redis_ping_ms": round(ping_ms, 2), "redis_used_memory_mib":
                round(now["redis"]["used_memory"] / 2**20, 1),
                "mem_available_mib": now["kernel"]["mem_available_kib"] // 1024,
                "nodes_rss_mib": round(now["nodes"]["rss_kib"] / 1024),
                "holders_rss_mib": round(now["holders"]["rss_kib"] / 1024),
                "tcp_inuse": now["kernel"]["tcp_inuse"], "files_open": now["kernel"]["files_open"],
                "redis_unreachable_lines": lines}

    def meter(self):
        return {"t": time.monotonic(), "nodes": group(n.pid for n in self.live_nodes()),
                "node_cpu": {n.pid: proc_stat(n.pid)[1] for n in self.live_nodes()},
                "holders": group(h.pid for h in self.holders),
                "redis": self.redis.snapshot(), "kernel": kernel(), "machine_cpu_s": machine_cpu_s(),
                "pid1_cpu_s": proc_stat(1)[1]}

    def phase(self, name, before, extra):
        after = self.meter()
        dt = after["t"] - before["t"]
        rb, ra = before["redis"], after["redis"]
        cmds = {k: ra["cmds"].get(k, 0) - rb["cmds"].get(k, 0) for k in ra["cmds"]}
        top = sorted(((k, v) for k, v in cmds.items() if v > 0), key=lambda kv: -kv[1])[:10]
        # A node killed during the phase is left out of both ends (its CPU is gone with it).
        nodes_cpu = sum(c - before["node_cpu"].get(pid, c) for pid, c in after["node_cpu"].items())
        ours = nodes_cpu + (after["holders"]["cpu_s"] - before["holders"]["cpu_s"]) \
            + (ra["cpu_s"] - rb["cpu_s"])
        rec = {
            "secs": round(dt, 3),
            "pid1_cpu_pct": round(100 * (after["pid1_cpu_s"] - before["pid1_cpu_s"]) / dt, 1),
            "machine_cpu_pct": round(100 * (after["machine_cpu_s"] - before["machine_cpu_s"]) / dt, 1),
            "rest_of_machine_cpu_pct": round(100 * (after["machine_cpu_s"] - before["machine_cpu_s"]
                                                    - ours) / dt, 1),
            "nodes_cpu_pct": round(100 * nodes_cpu / dt, 1),
            "holders_cpu_pct": round(100 * (after["holders"]["cpu_s"] - before["holders"]["cpu_s"]) / dt, 1),
            "redis_cpu_pct": round(100 * (ra["cpu_s"] - rb["cpu_s"]) / dt, 1),
            "redis_commands_per_s": round((ra["commands"] - rb["commands"]) / dt, 1),
            "redis_top_commands": {k: v for k, v in top},
            "redis_per_instance_commands_per_s": [
                round((a["commands"] - b["commands"]) / dt, 1)
                for a, b in zip(ra["per_instance"], rb["per_instance"])],
            **extra,
        }
        # Nodes that lost Redis for a moment say so in their logs (their answers meanwhile are
        # 503s, and a publish skips their sockets): count it for every phase.
        lines = {}
        for n in self.nodes:
            with open(n.log, errors="replace") as f:
                for l in f:
                    if "redis unreachable" in l:
                        why = l.split("redis unreachable (", 1)[1].split(":", 1)[0]
                        lines[why] = lines.get(why, 0) + 1
        rec["nodes_redis_unreachable_lines_so_far"] = lines
        self.result["phases"][name] = rec
        log(f"{name}: " + json.dumps({k: v for k, v in rec.items()
                                      if not isinstance(v, (dict, list))}))
        return rec

    def holders_stats(self):
        return merge_stats(all_holders(self.holders, "stats"))

    def scale_push(self, secs, rate, idempotent=False, background=False):
        argv = [self.bench, "scale-push", "--nodes",
                ",".join(f"127.0.0.1:{n.port}" for n in self.nodes), "--password", PASSWORD,
                "--prefix", "s", "--uids", str(self.total), "--rate", str(rate),
                "--secs", str(secs), "--conns", str(self.a.push_conns)]
        if idempotent:
            argv.append("--idempotent")
        p = spawn("scale-push", argv, stdout=subprocess.PIPE, text=True)
        if background:
            return p
        return self.push_result(p)

    def push_result(self, p):
        out, _ = p.communicate(timeout=max(30, self.left()))
        if p.returncode != 0:
            raise SystemExit(f"scale: scale-push failed ({p.returncode})")
        return json.loads(out)

    def wait_delivered(self, key, want, secs):
        """Polls the holders until `key` reaches `want` (or stops moving for 3 s)."""
        deadline, last, still = time.monotonic() + secs, -1, time.monotonic()
        self.tcp_mem_peak_kib = 0
        while True:
            self.tcp_mem_peak_kib = max(self.tcp_mem_peak_kib, kernel()["tcp_mem_kib"])
            s = self.holders_stats()
            if s.get(key, 0) >= want or time.monotonic() > deadline:
                return s
            if s.get(key, 0) != last:
                last, still = s.get(key, 0), time.monotonic()
            elif time.monotonic() - still > 3:
                return s
            time.sleep(0.25)

    def check_deliveries(self, name, pushed, s):
        """Every accepted push received once. A push whose reply was an error (5xx, or no
        reply) may still have gone out: up to that many extra deliveries are not a fault."""
        unknown = pushed.get("other_status", 0) + (pushed.get("errors", 0) - pushed.get("retries", 0))
        got = s.get("user", 0)
        lost = pushed["accepted"] - got
        extra = max(0, -lost)
        ok = (lost <= 0 and extra <= unknown and s.get("duplicates", 0) == 0
              and s.get("missing", 0) == 0)
        if not ok:
            self.problem(f"{name}: accepted {pushed['accepted']} pushes ({unknown} unknown), "
                         f"holders got {got} (duplicates {s.get('duplicates', 0)}, holes "
                         f"{s.get('missing', 0)}, _gap {s.get('gap_frames', 0)})")
        return {"pushes": pushed, "received": got, "lost": max(0, lost),
                "delivered_although_refused": extra,
                "duplicates": s.get("duplicates", 0), "holes": s.get("missing", 0),
                "gap_frames": s.get("gap_frames", 0), "ok": ok,
                "latency_ms": percentiles(s.get("user_us", {}))}

    def want(self, phase):
        return phase in self.a.phases

    def run(self):
        a = self.a
        self.bench = os.path.join(a.bin_dir, "push-bench")
        binary = os.path.join(a.bin_dir, "push-serve")
        for b in (self.bench, binary):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"scale: {b} missing (cargo build --release -p push-serve -p push-bench)")
        self.total = a.sockets
        per_node = math.ceil(self.total / a.nodes)
        if per_node > a.per_process:
            raise SystemExit(f"scale: {per_node} sockets per node is over --per-process "
                             f"{a.per_process}; use more --nodes")
        self.result["bounds"] = self.bounds()
        log(f"{self.total} sockets on {a.nodes} nodes, "
            f"{'a Redis Cluster' if a.cluster else 'one Redis'}; work dir {TMP}")

        self.redis = Redis(a.cluster)
        extra = (f"heartbeat_interval_secs: {a.heartbeat}\nmax_sockets: {a.per_process + 500}\n"
                 f"max_sockets_per_address: 1000000\n")
        self.nodes = [Node(i, binary, self.redis, extra) for i in range(a.nodes)]
        for n in self.nodes:
            n.wait()
        self.holders = []
        time.sleep(1)
        base = self.meter()
        self.result["baseline"] = {"nodes_rss_kib": base["nodes"]["rss_kib"],
                                   "redis_used_memory": base["redis"]["used_memory"],
                                   "kernel": base["kernel"]}

        # ---- connect
        n_holders = math.ceil(self.total / a.per_process)
        t0 = time.monotonic()
        # Holders start in waves; before each, what the sockets so far cost is projected onto
        # the next wave, and the run stops growing where memory or open files would run out
        # (this machine is shared: never push it into the OOM killer).
        first, readies, stop, wave = 0, [], None, max(1, a.wave)
        counts = [self.total // n_holders + (1 if h < self.total % n_holders else 0)
                  for h in range(n_holders)]
        for w0 in range(0, n_holders, wave):
            k = kernel()
            if first:
                held_kib = (base["kernel"]["mem_available_kib"] - k["mem_available_kib"])
                need_kib = held_kib / first * sum(counts[w0:w0 + wave])
                if k["mem_available_kib"] - need_kib < a.mem_floor_mib * 1024:
                    stop = (f"memory: {k['mem_available_kib'] // 1024} MiB available after "
                            f"{first} sockets, the next {sum(counts[w0:w0 + wave])} would take "
                            f"about {int(need_kib // 1024)} MiB (floor --mem-floor-mib "
                            f"{a.mem_floor_mib})")
            with open("/proc/sys/fs/file-max") as f:
                file_max = int(f.read())
            if k["files_open"] + 2 * sum(counts[w0:w0 + wave]) + 5000 > file_max:
                stop = (f"fs.file-max: {k['files_open']} files open after {first} sockets, "
                        f"the next {sum(counts[w0:w0 + wave])} need twice that, max {file_max}")
            if stop:
                break
            batch = []
            for h in range(w0, min(n_holders, w0 + wave)):
                holder = Holder(h, self.bench, self.nodes, first, counts[h], a.concurrency)
                self.holders.append(holder)
                batch.append(holder)
                first += counts[h]
            wm, wt = self.meter(), time.monotonic()
            wave_readies = [h.ready() for h in batch]
            readies += wave_readies
            ok_w = sum(r["ok"] for r in wave_readies)
            failed_w = sum(r["failed"] for r in wave_readies)
            secs_w = time.monotonic() - wt
            rec = self.sample(wm)
            rec.update({"sockets_total": sum(r["ok"] for r in readies), "wave_ok": ok_w,
                        "wave_failed": failed_w, "wave_secs": round(secs_w, 1),
                        "wave_rate": round(ok_w / max(secs_w, 1e-9))})
            self.result["connect_waves"].append(rec)
            log("connect wave: " + json.dumps(rec))
            if w0 == 0:
                first_rate = rec["wave_rate"]
            elif (failed_w > 0.005 * (ok_w + failed_w)
                  or rec["wave_rate"] < a.min_wave_rate_share * first_rate):
                stop = (f"connect throughput: the wave that reached {rec['sockets_total']} "
                        f"sockets connected {ok_w} at {rec['wave_rate']}/s ({failed_w} failed; "
                        f"the first wave: {first_rate}/s); Redis answered a PING in "
                        f"{rec['redis_ping_ms']} ms, nodes logged {rec['redis_unreachable_lines']} "
                        f"'redis unreachable' lines so far")
                break
        took = time.monotonic() - t0
        if stop:
            self.problem("connect: stopped growing at the bound: " + stop)
            self.result["stopped_by"] = stop
        self.total = first
        ok = sum(r["ok"] for r in readies)
        failed = sum(r["failed"] for r in readies)
        if failed:
            self.problem(f"connect: {failed} sockets failed; first error: "
                         + next(r["error"] for r in readies if r["failed"]))
        time.sleep(a.settle)
        after = self.meter()
        st = self.holders_stats()
        k0, k1 = base["kernel"], after["kernel"]
        caches = {c: k1["socket_caches_kib"].get(c, 0) - k0["socket_caches_kib"].get(c, 0)
                  for c in k1["socket_caches_kib"]}
        kern_kib = (k1["slab_kib"] - k0["slab_kib"]) + (k1["tcp_mem_kib"] - k0["tcp_mem_kib"])
        held = st.get("open", 0)
        per = lambda kib: round(kib / max(held, 1), 3)
        mem = {
            "sockets": held,
            "push_serve_kib_per_socket": per(after["nodes"]["rss_kib"] - base["nodes"]["rss_kib"]),
            "push_serve_rss_mib": round(after["nodes"]["rss_kib"] / 1024, 1),
            "kernel_kib_per_pair": per(kern_kib),
            "kernel_socket_caches_kib_per_pair": per(sum(caches.values())),
            "kernel_socket_caches_kib": caches,
            "kernel_tcp_mem_kib": k1["tcp_mem_kib"] - k0["tcp_mem_kib"],
            "kernel_slab_delta_kib": k1["slab_kib"] - k0["slab_kib"],
            "redis_bytes_per_socket": round((after["redis"]["used_memory"]
                                             - base["redis"]["used_memory"]) / max(held, 1), 1),
            "redis_used_memory_mib": round(after["redis"]["used_memory"] / 2**20, 1),
            "load_side_kib_per_socket": per(after["holders"]["rss_kib"]),
            "load_side_rss_mib": round(after["holders"]["rss_kib"] / 1024, 1),
            "mem_available_drop_mib": round((k0["mem_available_kib"] - k1["mem_available_kib"]) / 1024),
            "files_open": k1["files_open"],
        }
        self.phase("connect", base, {
            "sockets": ok, "failed": failed, "holders": len(self.holders), "secs_to_all": round(took, 2),
            "connects_per_s": round(ok / took), "handshake_ms": percentiles(st.get("handshake_us", {})),
            "memory": mem})
        log("memory: " + json.dumps({k: v for k, v in mem.items() if not isinstance(v, dict)}))
        if held < self.total:
            self.problem(f"connect: {held} of {self.total} sockets open after settling")

        # ---- queries
        if self.want("queries"):
            self.check_time("queries")
            m = self.meter()
            t = time.monotonic()
            converge = None
            while time.monotonic() - t < 15:
                cl = [n.get("/stats")[1]["contents"].get("cluster", {}).get("sockets") for n in self.nodes]
                if all(c == held for c in cl):
                    converge = time.monotonic() - t
                    break
                time.sleep(0.5)
            local = sum(n.get("/stats")[1]["contents"]["sockets"] for n in self.nodes)
            if converge is None:
                self.problem(f"queries: /stats cluster sockets {cl}, want {held} on every node")
            rng = random.Random(20)
            wrong, t1, samples = [], time.monotonic(), 200
            for _ in range(samples):
                i = rng.randrange(self.total)
                node = self.nodes[rng.randrange(len(self.nodes))]
                c = node.get(f"/online?uid=s{i}")[1]["contents"]
                if not c.get("online") or c.get("sockets") != 1:
                    wrong.append((i, c))
            for j in range(20):
                c = self.nodes[j % len(self.nodes)].get(f"/online?uid=absent{j}")[1]["contents"]
                if c.get("online") or c.get("sockets"):
                    wrong.append((f"absent{j}", c))
            online_ms = (time.monotonic() - t1) * 1000 / (samples + 20)
            if wrong:
                self.problem(f"queries: /online wrong for {len(wrong)} uids, e.g. {wrong[:3]}")
            self.phase("queries", m, {"stats_cluster_sockets_ok": converge is not None,
                                      "stats_converged_secs": converge and round(converge, 2),
                                      "stats_local_sum": local, "online_checked": samples + 20,
                                      "online_wrong": len(wrong), "online_ms_each": round(online_ms, 2)})

        # ---- rest
        if self.want("rest"):
            self.check_time("rest")
            m = self.meter()
            time.sleep(a.rest_secs)
            rec = self.phase("rest", m, {"sockets": held, "heartbeat_interval_secs": a.heartbeat})
            rec["nodes_cpu_pct_per_100k_sockets"] = round(rec["nodes_cpu_pct"] * 1e5 / max(held, 1), 2)

        # ---- broadcast
        if self.want("broadcast"):
            self.check_time("broadcast")
            all_holders(self.holders, "reset")
            m = self.meter()
            code, reply = self.nodes[0].post("/broadcast", {"topic": "b", "contents":
                                                            {"t": time.monotonic_ns(), "k": "b"}})
            s = self.wait_delivered("broadcast", held, min(120, self.left()))
            got = s.get("broadcast", 0)
            lat = percentiles(s.get("broadcast_us", {}))
            if got != held or s.get("duplicates"):
                self.problem(f"broadcast: {got} of {held} sockets got it "
                             f"(duplicates {s.get('duplicates', 0)})")
            self.phase("broadcast", m, {"status": code, "number": reply.get("number"),
                                        "delivered": got, "lost": held - got,
                                        "duplicates": s.get("duplicates", 0),
                                        "first_ms": lat.get("min"), "median_ms": lat.get("p50"),
                                        "p99_ms": lat.get("p99"), "last_ms": lat.get("max"),
                                        "tcp_mem_peak_kib": self.tcp_mem_peak_kib})

        # ---- unicast
        if self.want("unicast"):
            self.check_time("unicast")
            all_holders(self.holders, "reset")
            m = self.meter()
            pushed = self.scale_push(a.unicast_secs, a.rate)
            s = self.wait_delivered("user", pushed["accepted"], a.deliver_wait)
            self.phase("unicast", m, {"rate": a.rate, **self.check_deliveries("unicast", pushed, s)})

        # ---- storm
        if self.want("storm"):
            self.check_time("storm")
            all_holders(self.holders, "reset")
            m = self.meter()
            pusher = self.scale_push(a.storm_push_secs, a.rate, background=True)
            time.sleep(1)
            t_drop = time.monotonic()
            dropped = sum(r["dropped"] for r in all_holders(self.holders, "drop"))
            gone = None
            while time.monotonic() - t_drop < 30:
                if sum(n.get("/stats")[1]["contents"]["sockets"] for n in self.nodes) == 0:
                    gone = time.monotonic() - t_drop
                    break
                time.sleep(0.1)
            time.sleep(max(0, a.storm_offline_secs - (time.monotonic() - t_drop)))
            t_back = time.monotonic()
            replies = all_holders(self.holders, "reconnect")
            back_secs = time.monotonic() - t_back
            back = sum(r["back"] for r in replies)
            pushed = self.push_result(pusher)
            s = self.wait_delivered("user", pushed["accepted"], 15)
            if back != held:
                self.problem(f"storm: {back} of {held} sockets came back")
            self.phase("storm", m, {"dropped": dropped, "server_saw_all_gone_secs": gone and round(gone, 2),
                                    "offline_secs": round(t_back - t_drop, 2), "back": back,
                                    "secs_to_all_back": round(back_secs, 2),
                                    "reconnects_per_s": round(back / max(back_secs, 1e-9)),
                                    "handshake_ms": percentiles(s.get("handshake_us", {})),
                                    **self.check_deliveries("storm", pushed, s)})

        # ---- kill
        if self.want("kill") and len(self.nodes) > 1:
            self.check_time("kill")
            all_holders(self.holders, "reset")
            victim = self.nodes[-1]
            on_victim = victim.get("/stats")[1]["contents"]["sockets"]
            m = self.meter()
            pusher = self.scale_push(a.kill_push_secs, a.rate, idempotent=True, background=True)
            time.sleep(2)
            t_kill = time.monotonic()
            kill_ns = time.monotonic_ns()
            victim.proc.kill()
            victim.proc.wait()
            victim.killed = True
            pushed = self.push_result(pusher)
            deadline = time.monotonic() + 60
            while True:
                s = self.holders_stats()
                if s.get("open", 0) >= held or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            s = self.wait_delivered("user", pushed["accepted"], 15)
            back_secs = (s["last_connect_ns"] - kill_ns) / 1e9 if s.get("last_connect_ns") else None
            if s.get("open", 0) < held:
                self.problem(f"kill: {s.get('open', 0)} of {held} sockets open after 60 s")
            stats_after = None
            t = time.monotonic()
            while time.monotonic() - t < 25:
                stats_after = self.nodes[0].get("/stats")[1]["contents"].get("cluster", {})
                if stats_after.get("sockets") == held and stats_after.get("nodes") == len(self.nodes) - 1:
                    break
                time.sleep(1)
            self.phase("kill", m, {"killed_node_sockets": on_victim,
                                   "unexpected_closes": s.get("unexpected_closes", 0),
                                   "close_codes": s.get("close_codes", {}),
                                   "open_after": s.get("open", 0),
                                   "secs_until_all_back": back_secs and round(back_secs, 2),
                                   "stats_after": stats_after,
                                   "stats_settled_secs": round(time.monotonic() - t, 1),
                                   **self.check_deliveries("kill", pushed, s)})
        self.result["holders_final"] = {k: v for k, v in self.holders_stats().items()
                                        if not k.endswith("_us")}
        return self.result

    def bounds(self):
        """What limits the run on this machine before it starts: files and memory."""
        k = kernel()
        with open("/proc/sys/fs/file-max") as f:
            file_max = int(f.read())
        need_files = 2 * self.total + 64 * (self.a.nodes + 10)
        est_kib = self.total * (3.5 + 9.6 + 1.0 + 0.4)
        out = {"file_max": file_max, "files_open_before": k["files_open"],
               "files_needed_estimate": need_files,
               "mem_available_mib": k["mem_available_kib"] // 1024,
               "mem_needed_estimate_mib": int(est_kib // 1024)}
        if need_files + k["files_open"] > file_max:
            self.problem(f"bounds: {need_files} files needed, fs.file-max {file_max}")
        if est_kib > 0.9 * k["mem_available_kib"]:
            self.problem(f"bounds: about {int(est_kib // 1024)} MiB needed, "
                         f"{k['mem_available_kib'] // 1024} MiB available")
        return out


def main():
    global TMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, help="sockets in all (default 100,000; --full 1,000,000)")
    ap.add_argument("--nodes", type=int, help="push-serve nodes (default 10; --full enough for "
                    "--per-process sockets each)")
    ap.add_argument("--full", action="store_true", help="go for a million sockets")
    ap.add_argument("--cluster", action="store_true", help="a Redis Cluster (3 masters + 3 "
                    "replicas) instead of one Redis (needs push-serve's redis_cluster)")
    ap.add_argument("--per-process", type=int, default=19500,
                    help="most sockets per node and per holder (open-files limit 20,000)")
    ap.add_argument("--concurrency", type=int, default=32, help="handshakes in flight per holder")
    ap.add_argument("--rate", type=float, default=1000, help="unicast pushes per second")
    ap.add_argument("--push-conns", type=int, default=8)
    ap.add_argument("--unicast-secs", type=float, default=20)
    ap.add_argument("--deliver-wait", type=float, default=10,
                    help="seconds the unicast phase waits, after its last push, for every accepted "
                         "push to arrive (it also stops when deliveries stop moving for 3 s)")
    ap.add_argument("--rest-secs", type=float, default=65,
                    help="idle window: past one heartbeat and one presence refresh (60 s)")
    ap.add_argument("--heartbeat", type=int, default=25, help="heartbeat_interval_secs")
    ap.add_argument("--storm-offline-secs", type=float, default=3)
    ap.add_argument("--storm-push-secs", type=float, default=12)
    ap.add_argument("--kill-push-secs", type=float, default=15)
    ap.add_argument("--phases", default="queries,rest,broadcast,unicast,storm,kill",
                    help="phases after connect, comma-separated (default: all)")
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--wave", type=int, default=4, help="holders started at once")
    ap.add_argument("--min-wave-rate-share", type=float, default=0.15,
                    help="stop growing when a wave connects slower than this share of the "
                    "first wave's rate, or more than 0.5%% of its sockets fail")
    ap.add_argument("--mem-floor-mib", type=int, default=3072,
                    help="stop adding sockets before MemAvailable would fall below this")
    ap.add_argument("--max-secs", type=float, help="bound on the whole run (default 600; --full 3600)")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--out", help="JSON results (default bench/results-scale-<size>-<redis>.json)")
    a = ap.parse_args()
    a.phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    if a.sockets is None:
        a.sockets = 1_000_000 if a.full else 100_000
    if a.nodes is None:
        a.nodes = math.ceil(a.sockets / a.per_process) if a.full else 10
    if a.max_secs is None:
        a.max_secs = 3600 if a.full else 600
    if a.out is None:
        a.out = os.path.join(HERE, f"results-scale-{'full' if a.full else 'default'}-"
                                   f"{'cluster' if a.cluster else 'redis'}.json")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    TMP = tempfile.mkdtemp(prefix="push-scale-")
    run = Run(a)
    t0 = time.monotonic()
    try:
        result = run.run()
        result["wall_secs"] = round(time.monotonic() - t0, 1)
    except BaseException as e:
        run.result["aborted"] = str(e) or type(e).__name__
        run.result["wall_secs"] = round(time.monotonic() - t0, 1)
        result = run.result
        log(f"aborted: {run.result['aborted']}")
        raise
    finally:
        run.result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(a.out, "w") as f:
            json.dump(run.result, f, indent=1)
        log(f"wrote {a.out}")
        cleanup()
    print(json.dumps({k: v for k, v in result["phases"].items()}, indent=1))
    if result["problems"]:
        print("problems:\n  " + "\n  ".join(result["problems"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
