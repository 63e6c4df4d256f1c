#!/usr/bin/env bash
# A real schema registry for development and tests: Apicurio Registry 3.0.9
# (in-memory storage, no auth) on 127.0.0.1:8081, speaking the Confluent
# Schema Registry REST API at /apis/ccompat/v7.
#
#   scripts/registry.sh up       fetch once (Maven Central), start, wait until ready
#   scripts/registry.sh down     stop it
#   scripts/registry.sh status   is it running?
#   scripts/registry.sh pid      its process id (tests stop and restart it)
#
# The tarball io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all is copied by
# Maven into a cache folder outside the clone, like the Kafka jars. 3.0.x is
# the last line that runs on Java 17 (3.3 needs 21).
set -euo pipefail

VERSION="${REGISTRY_VERSION:-3.0.9}"
HOME_DIR="${PERSONA_BUS_REGISTRY_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/persona-bus/apicurio-$VERSION}"
APP="$HOME_DIR/app"
PORT="${REGISTRY_PORT:-8081}"
# One running registry's files; tests may start another with their own.
INSTANCE="${REGISTRY_INSTANCE_DIR:-$HOME_DIR/run-$PORT}"
LOG="$INSTANCE/registry.log"
PIDFILE="$INSTANCE/registry.pid"

die() { echo "registry.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

fetch() {
    [ -f "$APP/.complete" ] && return 0
    command -v mvn >/dev/null || die "Maven is required to fetch Apicurio Registry (apt-get install maven)"
    mkdir -p "$HOME_DIR"
    echo "fetching Apicurio Registry $VERSION from Maven Central into $APP (once)"
    rm -rf "$APP" "$HOME_DIR/dl"
    mvn -q -B dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all" \
        -DoutputDirectory="$HOME_DIR/dl" >"$HOME_DIR/fetch.log" 2>&1 \
        || { tail -20 "$HOME_DIR/fetch.log" >&2; die "could not fetch Apicurio Registry (see $HOME_DIR/fetch.log)"; }
    mkdir -p "$APP"
    tar -xzf "$HOME_DIR/dl/apicurio-registry-app-$VERSION-all.tar.gz" -C "$APP"
    rm -rf "$HOME_DIR/dl"
    [ -n "$(runner)" ] || die "no runner jar in the Apicurio tarball (see $APP)"
    touch "$APP/.complete"
}

runner() {
    find "$APP" -name "apicurio-registry-app-*-runner.jar" -print -quit 2>/dev/null
}

ready() {
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/apis/ccompat/v7/subjects" 2>/dev/null
}

up() {
    command -v java >/dev/null || die "Java 17 is required (apt-get install openjdk-17-jre-headless)"
    fetch
    if ready; then
        # Ours (pidfile) or one started another way: either serves.
        echo "a registry already answers on 127.0.0.1:$PORT"
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT is taken by another process"
    mkdir -p "$INSTANCE"
    local jar
    jar=$(runner)
    echo "starting Apicurio Registry $VERSION on 127.0.0.1:$PORT (log: $LOG)"
    # Run from the jar's own folder: Quarkus finds its lib/ beside it.
    cd "$(dirname "$jar")"
    # shellcheck disable=SC2086
    nohup java ${REGISTRY_HEAP:--Xms64m -Xmx384m} -XX:+UseSerialGC \
        -Dquarkus.http.port="$PORT" -Dquarkus.http.host=127.0.0.1 \
        -Dquarkus.log.level=WARN -Dquarkus.banner.enabled=false \
        -jar "$jar" </dev/null >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    await_up "registry" 240 0.5 ready
}

down() {
    stop_service "registry" 40 0.25
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    pid) running && cat "$PIDFILE" ;;
    status) if running && ready; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
    *) die "usage: $0 up|down|status|pid" ;;
esac
