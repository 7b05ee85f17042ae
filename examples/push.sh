#!/usr/bin/env bash
# push-serve from the command line with curl.
#   examples/push.sh key UID                 print an access key for UID
#   examples/push.sh push UID TOPIC JSON     push JSON (any JSON value) under TOPIC to UID
# PUSH_URL (default http://localhost:8080) and PUSH_PASSWORD (default abc123) set the target.
# The password goes in an Authorization header, so it stays out of URLs and proxy logs.
set -euo pipefail
url=${PUSH_URL:-http://localhost:8080}
password=${PUSH_PASSWORD:-abc123}
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

case "${1:-}" in
  key)
    curl -sS -H "Authorization: Bearer $password" "$url/access?uid=$(enc "$2")"
    echo ;;
  push)
    curl -sS -X POST -H "Authorization: Bearer $password" -H 'Content-Type: application/json' \
      --data-binary "{\"topic\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$3"), \"contents\": $4}" \
      "$url/push?uid=$(enc "$2")"
    echo ;;
  *)
    sed -n '2,6p' "$0"; exit 2 ;;
esac
