#!/usr/bin/env bash
# Builds (once) the OpenTelemetry Collector of tools/otelcol/builder.yaml,
# from the Go module proxy, into the cache outside the clone:
#   ~/.cache/persona-bus/otelcol-0.161.0/persona-otelcol
# The trace tests start their own collector from it (tests/src/otel.rs).
set -euo pipefail
VERSION=0.161.0
CACHE=${PERSONA_BUS_CACHE:-$HOME/.cache/persona-bus}/otelcol-$VERSION
BIN=$CACHE/persona-otelcol
if [ -x "$BIN" ]; then exit 0; fi
command -v go >/dev/null || { echo "Go (1.24 or newer) is needed to build the OpenTelemetry Collector for the trace tests"; exit 1; }
mkdir -p "$CACHE"
echo "building the OpenTelemetry Collector $VERSION for the trace tests (once, ~2 min)"
GOBIN="$CACHE/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$VERSION"
sed "s#OUTPUT_PATH#$CACHE/src#" "$(dirname "$0")/../tools/otelcol/builder.yaml" > "$CACHE/builder.yaml"
"$CACHE/bin/builder" --config "$CACHE/builder.yaml"
mv "$CACHE/src/persona-otelcol" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "collector ready: $BIN"
