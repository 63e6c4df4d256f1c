#!/usr/bin/env bash
# A real OCI registry for development and tests: CNCF Distribution's
# `registry` (github.com/distribution/distribution/v3, the reference
# implementation of the OCI distribution API; blobs on disk under the
# instance folder) on 127.0.0.1:5050, built once from the Go module proxy
# into the cache folder outside the clone, as the Kafka and Apicurio
# scripts fetch theirs. (go-containerregistry's cmd/registry was tried
# first: it leaves out the Location header the spec asks of a manifest
# PUT, which spec-following clients such as oci-client refuse.)
#
#   scripts/oci.sh up       build once, start, wait until it answers /v2/
#   scripts/oci.sh down     stop it
#   scripts/oci.sh status   is it running?
#   scripts/oci.sh pid      its process id (tests stop and restart it)
#   scripts/oci.sh bin      the path of the binary (built if missing)
#
# OCI_PORT picks another port; tests start registries of their own with it.
set -euo pipefail

VERSION="${OCI_REGISTRY_VERSION:-v3.1.2}"
CACHE="${PERSONA_BUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/persona-bus}/distribution-$VERSION"
BIN="$CACHE/bin/registry"
PORT="${OCI_PORT:-5050}"
INSTANCE="${OCI_INSTANCE_DIR:-$CACHE/run-$PORT}"
LOG="$INSTANCE/registry.log"
PIDFILE="$INSTANCE/registry.pid"

die() { echo "oci.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

build() {
    [ -x "$BIN" ] && return 0
    command -v go >/dev/null || die "Go (1.24 or newer) is needed to build the OCI registry (apt-get install golang)"
    mkdir -p "$CACHE"
    echo "building the OCI registry (CNCF Distribution $VERSION) into $BIN (once, about a minute)"
    GOBIN="$CACHE/bin" GOFLAGS=-mod=mod go install "github.com/distribution/distribution/v3/cmd/registry@$VERSION" \
        >"$CACHE/build.log" 2>&1 || { tail -20 "$CACHE/build.log" >&2; die "could not build the registry (see $CACHE/build.log)"; }
}

ready() {
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v2/" 2>/dev/null
}

up() {
    build
    if ready; then
        echo "an OCI registry already answers on 127.0.0.1:$PORT"
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT is taken by another process"
    mkdir -p "$INSTANCE/data"
    cat >"$INSTANCE/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $INSTANCE/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
YAML
    echo "starting the OCI registry on 127.0.0.1:$PORT (log: $LOG)"
    nohup "$BIN" serve "$INSTANCE/config.yml" </dev/null >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    await_up "OCI registry" 100 0.1 ready
}

down() {
    stop_service "OCI registry" 40 0.1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    bin) build; echo "$BIN" ;;
    pid) running && cat "$PIDFILE" ;;
    status) if running && ready; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
    *) die "usage: $0 up|down|status|pid|bin" ;;
esac
