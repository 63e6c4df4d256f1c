#!/usr/bin/env bash
# `make screenshot`: starts the host on a throwaway data folder with the
# example handlers (embedded SQLite, demo traffic), drives the dashboard in
# headless Chromium under a steady load, and writes docs/dashboard.png.
set -euo pipefail
BIN=${BIN:?set BIN to the persona-bus binary}
HANDLERS_DIR=${HANDLERS_DIR:-build/handlers}
OUT=${1:-docs/dashboard.png}
PORT=${SCREENSHOT_PORT:-18089}
DATA=$(mktemp -d)
trap 'kill "$HOST" 2>/dev/null || true; wait "$HOST" 2>/dev/null || true; rm -rf "$DATA"' EXIT

RUST_LOG=warn "$BIN" --data-dir "$DATA" run --handlers "$HANDLERS_DIR" \
  --http-addr "127.0.0.1:$PORT" --demo &
HOST=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "the host did not become ready on port $PORT"; exit 1; }
mkdir -p "$(dirname "$OUT")"
node tests/browser/screenshot.mjs "http://127.0.0.1:$PORT" "$OUT"
