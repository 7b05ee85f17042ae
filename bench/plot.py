#!/usr/bin/env python3
"""Plot a push-bench report: KiB per idle socket, and push latency percentiles, per server.

    python3 bench/plot.py bench/results-full.json bench/plot.png
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def main():
    src, dst = (sys.argv[1:3] + [None, None])[:2]
    if not src or not dst:
        sys.exit(__doc__)
    with open(src) as f:
        report = json.load(f)
    servers = [s["name"] for s in report["servers"]]
    rows = {(r["scenario"], r["server"]): r for r in report["rows"]}

    def metric(scenario, server, name):
        r = rows.get((scenario, server))
        if not r or not r["ok"]:
            return math.nan
        v = r["metrics"].get(name)
        return math.nan if v is None else v

    idle = [s["id"] for s in report["scenarios"] if s["id"].startswith("idle-")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(1, len(servers))

    # Panel 1: KiB per idle socket, one group per idle step.
    for i, server in enumerate(servers):
        xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(idle))]
        ys = [metric(sc, server, "KiB/socket") for sc in idle]
        bars = ax1.bar(xs, ys, width, label=server)
        for x, y in zip(xs, ys):
            if not math.isnan(y):
                ax1.annotate(f"{y:.1f}", (x, y), ha="center", va="bottom", fontsize=8)
        del bars
    labels = []
    for sc in idle:
        n = [metric(sc, s, "sockets") for s in servers]
        n = [v for v in n if not math.isnan(v)]
        labels.append(f"{sc}\n({int(min(n)) if n else '?'} sockets)" if n and min(n) == max(n) else f"{sc}\n({int(min(n)) if n else '?'}–{int(max(n)) if n else '?'} sockets)")
    ax1.set_xticks(range(len(idle)), labels)
    ax1.axhline(4, color="grey", linestyle="--", linewidth=1)
    ax1.annotate("goal ≤ 4 KiB", (len(idle) - 0.5, 4), ha="right", va="bottom", fontsize=8, color="grey")
    ax1.set_ylabel("server RSS per idle socket (KiB)")
    ax1.set_title("Idle memory (lower is better)")
    ax1.legend()

    # Panel 2: push -> receive latency percentiles, rate-limited and max-throughput unicast.
    scen = {s["id"]: s["title"] for s in report["scenarios"]}
    groups = [("unicast-rate", q) for q in ("p50 ms", "p99 ms", "p99.9 ms")] + [
        ("unicast-max", q) for q in ("p50 ms", "p99 ms")
    ]
    groups = [g for g in groups if g[0] in scen]
    for i, server in enumerate(servers):
        xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(groups))]
        ys = [metric(sc, server, q) for sc, q in groups]
        ax2.bar(xs, ys, width, label=server)
        for x, y in zip(xs, ys):
            if not math.isnan(y):
                ax2.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(
        range(len(groups)),
        [f"{q.replace(' ms', '')}\n{'1000/s' if sc == 'unicast-rate' else 'max rate'}" for sc, q in groups],
    )
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.axhline(2, color="grey", linestyle="--", linewidth=1)
    ax2.annotate("goal p99 ≤ 2 ms at 1000/s", (0, 2), ha="left", va="bottom", fontsize=8, color="grey")
    ax2.set_ylabel("push → receive latency (ms, log scale)")
    ax2.set_title("Unicast latency (lower is better)")
    ax2.legend()

    fig.suptitle(
        f"push-bench {report['mode']} — {report['machine']['cpus']} × {report['machine']['cpu_model']}"
        + (f" — {report['machine']['placement']}" if report["machine"].get("placement") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot.py: wrote {dst}")


if __name__ == "__main__":
    main()
