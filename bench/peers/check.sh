#!/usr/bin/env bash
# Runs push-serve's contract tests (tests/it/contract.rs) against each reference peer, so the
# benchmark compares servers that behave alike. Needs setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/../.."
password=peer-contract
run() {
  local name=$1; shift
  # A peer that is not built (bench/peers/setup.sh, run by .ci/run) is skipped with a line,
  # unless PUSH_SERVE_REQUIRE_ALL is set (as .ci/run does).
  local runtime=$1 program=${2:-$1}
  if ! command -v "$runtime" >/dev/null 2>&1 || [ ! -e "$program" ] \
     || { [ "$name" = node ] && [ ! -d bench/peers/node/node_modules/ws ]; }; then
    if [ -n "${PUSH_SERVE_REQUIRE_ALL:-}" ] && [ "${PUSH_SERVE_REQUIRE_ALL}" != 0 ]; then
      echo "the $name peer is missing (bash bench/peers/setup.sh), and PUSH_SERVE_REQUIRE_ALL is set" >&2
      return 1
    fi
    echo "skipped the contract tests against the $name peer: it is missing (bash bench/peers/setup.sh)"
    return 0
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local conf
  conf=$(mktemp --suffix=.yaml)
  printf 'addr: 127.0.0.1:%s\npassword: %s\n' "$port" "$password" > "$conf"
  "$@" "$conf" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  echo "== contract tests against the $name peer"
  local rc=0
  PUSH_SERVE_TARGET=127.0.0.1:$port PUSH_SERVE_PASSWORD=$password cargo test -q --test it contract:: || rc=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -f "$conf"
  return $rc
}
run node node bench/peers/node/server.js
run go bench/peers/go/push-peer-go
