#!/usr/bin/env bash
# The scale run: N push-serve nodes on one Redis (or a Redis Cluster with --cluster) and load
# processes holding up to the open-files limit each. See BENCHMARKS.md, "Scale run".
#
#   bash bench/scale.sh                  # 100,000 sockets on 10 nodes, one Redis (≈ 3-4 min here)
#   bash bench/scale.sh --full           # toward 1,000,000 sockets (about 52 nodes of 19,500)
#   bash bench/scale.sh --cluster        # the same on a Redis Cluster (3 masters + 3 replicas)
#   bash bench/scale.sh --sockets 2000 --nodes 2 --rest-secs 2   # a quick check
#   python3 bench/scale.py --help        # every option
#
# It builds the release binaries if they are missing (SCALE_BUILD=1 rebuilds), raises the
# open-files limit, and runs bench/scale.py, which kills everything it started when it ends,
# however it ends (it also makes its children die with it).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "scale.sh: $tool is missing (apt-get install redis-server python3)" >&2; exit 2; }
done
bin_dir="${CARGO_TARGET_DIR:-target}/release"
if [[ "${SCALE_BUILD:-0}" == 1 || ! -x "$bin_dir/push-serve" || ! -x "$bin_dir/push-bench" ]]; then
    cargo build --release -p push-serve -p push-bench
fi
ulimit -n "$(ulimit -Hn)"
if [[ "$(ulimit -n)" -lt 20000 ]]; then
    echo "scale.sh: open-files limit $(ulimit -n); the defaults want 20,000 per process (--per-process to lower)" >&2
fi
exec python3 bench/scale.py --bin-dir "$bin_dir" "$@"
