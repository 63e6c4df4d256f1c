#!/usr/bin/env bash
# The ecosystem's own tools, for the interoperability tests of handlers in
# OCI registries, built once into the cache folder outside the clone:
#   cosign (sigstore, from the Go module proxy)
#       ~/.cache/persona-bus/cosign-v2.6.5/bin/cosign
#   wkg (wasm-pkg-tools, from crates.io)
#       ~/.cache/persona-bus/wkg-0.16.1/bin/wkg
# Tests find them there (tests/all/oci.rs).
set -euo pipefail
CACHE="${PERSONA_BUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/persona-bus}"
COSIGN_VERSION=v2.6.5
WKG_VERSION=0.16.1

cosign_bin="$CACHE/cosign-$COSIGN_VERSION/bin/cosign"
if [ ! -x "$cosign_bin" ]; then
    command -v go >/dev/null || { echo "oci-tools.sh: Go is needed to build cosign" >&2; exit 1; }
    echo "building cosign $COSIGN_VERSION (once, a few minutes)"
    mkdir -p "$CACHE/cosign-$COSIGN_VERSION"
    GOBIN="$CACHE/cosign-$COSIGN_VERSION/bin" GOFLAGS=-mod=mod \
        go install "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION" \
        >"$CACHE/cosign-$COSIGN_VERSION/build.log" 2>&1 \
        || { tail -20 "$CACHE/cosign-$COSIGN_VERSION/build.log" >&2; exit 1; }
fi

wkg_bin="$CACHE/wkg-$WKG_VERSION/bin/wkg"
if [ ! -x "$wkg_bin" ]; then
    echo "building wkg $WKG_VERSION (once, a few minutes)"
    # Its own target folder, so the project's build cache is not disturbed.
    CARGO_TARGET_DIR="$CACHE/wkg-$WKG_VERSION/target" \
        cargo install wkg --version "$WKG_VERSION" --locked --root "$CACHE/wkg-$WKG_VERSION" \
        >"$CACHE/wkg-build.log" 2>&1 \
        || { tail -20 "$CACHE/wkg-build.log" >&2; exit 1; }
    rm -rf "$CACHE/wkg-$WKG_VERSION/target"
fi
echo "cosign: $cosign_bin"
echo "wkg: $wkg_bin"
