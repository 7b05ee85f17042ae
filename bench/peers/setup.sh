#!/usr/bin/env bash
# Installs and builds the benchmark's reference peers; idempotent, offline-capable after the first
# run (Go builds in GOPATH mode against Debian's packaged gorilla/websocket and yaml.v2).
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/gorilla/websocket ] || need+=(golang-github-gorilla-websocket-dev)
[ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ] || need+=(golang-gopkg-yaml.v2-dev)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi

# Node + ws (npm ci only when node_modules lacks the pinned ws version)
want=$(node -p 'require("./node/package-lock.json").packages["node_modules/ws"].version')
have=$(node -p 'try { require("./node/node_modules/ws/package.json").version } catch { "" }')
if [ "$want" != "$have" ]; then
  (cd node && npm ci --no-audit --no-fund --silent)
fi

# Go + gorilla/websocket
if [ ! -x go/push-peer-go ] || [ go/main.go -nt go/push-peer-go ]; then
  (cd go && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE="${GOCACHE:-/tmp/push-peer-gocache}" \
    go build -o push-peer-go main.go)
fi
echo "peers ready: node $(node --version) ws $(node -p 'require("./node/node_modules/ws/package.json").version'), $(go version | cut -d' ' -f3)"
