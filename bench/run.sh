#!/usr/bin/env bash
# One command for the benchmark: push-serve against the Node.js+ws and Go+gorilla peers.
#
#   bash bench/run.sh [full|quick|smoke] [more push-bench flags, e.g. --servers push-serve,go]
#   bash bench/run.sh pusher [full|quick|smoke] [more push-bench pusher flags]
#
# full ≈ 8 minutes, quick < 1 minute, smoke a few seconds. Writes bench/results-<mode>.json
# and bench/plot.png. Honours CARGO_TARGET_DIR. Run it on an otherwise idle machine: the
# "other CPU%" column of every table shows how much else was running.
#
# `pusher` runs push-serve's Pusher-compatible mode against Soketi (bench/peers/README.md) with
# the raw Pusher protocol and writes bench/results-pusher-<date>.json (full ≈ 6 minutes). Soketi
# is taken from $SOKETI_DIR (default /work/soketi), installed there first if missing.
set -euo pipefail
mode=${1:-full}
shift || true
pusher=0
if [ "$mode" = pusher ]; then
    pusher=1
    mode=full
    case ${1:-} in full|quick|smoke) mode=$1; shift;; esac
fi
case $mode in full|quick|smoke) ;; *) echo "usage: bash bench/run.sh [pusher] [full|quick|smoke]" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

if [ $pusher = 1 ]; then
    soketi_dir=${SOKETI_DIR:-/work/soketi}
    if [ ! -x "$soketi_dir/run.sh" ] || [ ! -d "$soketi_dir/node_modules/@soketi/soketi" ]; then
        echo "run.sh: installing Soketi into $soketi_dir (../shared/peers/soketi/setup.sh)" >&2
        bash ../shared/peers/soketi/setup.sh "$soketi_dir"
    fi
elif [ ! -x bench/peers/go/push-peer-go ] || [ bench/peers/go/main.go -nt bench/peers/go/push-peer-go ] \
    || [ ! -d bench/peers/node/node_modules/ws ]; then
    echo "run.sh: building the peers (bench/peers/setup.sh)" >&2
    bash bench/peers/setup.sh
fi
cargo build --release -p push-serve -p push-bench

# Every socket is a file descriptor: take the hard limit (the loadgen's `hold` children and
# the servers inherit it; push-serve also raises its own).
ulimit -n "$(ulimit -Hn)"
echo "run.sh: open-files limit $(ulimit -n); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cpu_sample() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
read -r b0 i0 <<<"$(cpu_sample)"
sleep 1
read -r b1 i1 <<<"$(cpu_sample)"
busy=$(( (b1 - b0) * 100 / ((b1 - b0) + (i1 - i0) + 1) ))
if [ "$busy" -gt 15 ]; then
    echo "run.sh: WARNING: the machine is already ${busy}% busy; results will be disturbed" >&2
fi

# With 2+ CPUs the server runs on CPU 0 and the load generator on the others, so neither's
# numbers depend on how the scheduler split a shared core. PUSH_BENCH_PIN=0 turns it off.
pin=()
if [ "$(nproc)" -ge 2 ] && [ "${PUSH_BENCH_PIN:-1}" = 1 ]; then
    pin=(--pin)
fi

status=0
if [ $pusher = 1 ]; then
    out=bench/results-pusher-$(date -u +%F).json
    [ "$mode" = full ] || out=bench/results-pusher-$mode.json
    "$target/release/push-bench" pusher --mode "$mode" --push-serve-bin "$target/release/push-serve" \
        --soketi "$soketi_dir/run.sh" "${pin[@]}" --out "$out" "$@" || status=$?
    exit $status
fi
out=bench/results-$mode.json
"$target/release/push-bench" --mode "$mode" --push-serve-bin "$target/release/push-serve" \
    "${pin[@]}" --out "$out" "$@" || status=$?

if [ -f "$out" ]; then
    python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
    python3 bench/plot.py "$out" bench/plot.png
fi
exit $status
