#!/usr/bin/env bash
# Runs push-serve's contract tests (tests/contract.rs) against each reference peer, so the
# benchmark compares servers that behave alike. Needs setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/../.."
password=peer-contract
run() {
  local name=$1; shift
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
  PUSH_SERVE_TARGET=127.0.0.1:$port PUSH_SERVE_PASSWORD=$password cargo test -q --test contract || rc=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -f "$conf"
  return $rc
}
run node node bench/peers/node/server.js
run go bench/peers/go/push-peer-go
