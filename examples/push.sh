#!/usr/bin/env bash
# push-serve from the command line with curl.
#   examples/push.sh key UID                 print an access key for UID
#   examples/push.sh push UID TOPIC JSON     push JSON (any JSON value) under TOPIC to UID
# PUSH_SERVE_PASSWORD (required): the backends' password from conf.yaml.
# PUSH_URL (default http://localhost:8080): where push-serve listens.
# The password goes in an Authorization header read from a pipe, so it stays out of URLs, proxy
# logs and `ps`. Exit status: 0 on success; 22 when push-serve answers 4xx/5xx (its reply is
# still printed); 2 on a usage error.
set -euo pipefail
url=${PUSH_URL:-http://localhost:8080}
if [ -z "${PUSH_SERVE_PASSWORD:-}" ]; then
  echo "push.sh: set PUSH_SERVE_PASSWORD to the password in push-serve's conf.yaml" >&2
  exit 2
fi
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
# curl with the password header; prints the reply and a newline whatever the status.
call() {
  local status=0
  curl -sS --fail-with-body \
    -H @<(printf 'Authorization: Bearer %s\n' "$PUSH_SERVE_PASSWORD") "$@" || status=$?
  echo
  return "$status"
}

case "${1:-}" in
  key)
    [ $# -eq 2 ] || { sed -n '2,4p' "$0"; exit 2; }
    call "$url/access?uid=$(enc "$2")" ;;
  push)
    [ $# -eq 4 ] || { sed -n '2,4p' "$0"; exit 2; }
    call -X POST -H 'Content-Type: application/json' \
      --data-binary "{\"topic\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$3"), \"contents\": $4}" \
      "$url/push?uid=$(enc "$2")" ;;
  *)
    sed -n '2,9p' "$0"; exit 2 ;;
esac
