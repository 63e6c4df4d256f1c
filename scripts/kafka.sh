#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft: broker and controller in one
# process) on 127.0.0.1:9092, for development, tests and benchmarks.
#
#   scripts/kafka.sh up      fetch the jars once (Maven Central), format once, start, wait until ready
#   scripts/kafka.sh down    stop it
#   scripts/kafka.sh status  is it running?
#   scripts/kafka.sh tool CLASS ARGS...   run a Kafka command-line tool
#   scripts/kafka.sh pid     the broker's process id (the failover tests kill -9 it)
#
# The jars of org.apache.kafka:kafka_2.13 and its runtime dependencies are
# copied by Maven into a cache folder (outside the clone), so a fresh machine
# needs only Java 17 and Maven, and later runs start in seconds.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
# Bump when the list of jars below changes, so caches are fetched again.
RECIPE=2
HOME_DIR="${PERSONA_BUS_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/persona-bus/kafka-$KAFKA_VERSION}"
LIBS="$HOME_DIR/libs"
# One broker's files (config, data, log, pid). Another instance (the
# failover tests start a private broker they can kill) sets its own, with
# KAFKA_PORT and KAFKA_CONTROLLER_PORT; the jars are shared.
INSTANCE="${KAFKA_INSTANCE_DIR:-$HOME_DIR}"
DATA="${KAFKA_DATA_DIR:-$INSTANCE/data}"
CONF="$INSTANCE/server.properties"
LOG="$INSTANCE/server.log"
PIDFILE="$INSTANCE/kafka.pid"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

java_ok() {
    command -v java >/dev/null || die "Java 17 is required (apt-get install openjdk-17-jre-headless)"
    local major
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    [ "${major:-0}" -ge 17 ] || die "Java 17 or newer is required, found ${major:-none}"
}

fetch() {
    [ -f "$LIBS/.complete-$RECIPE" ] && return 0
    command -v mvn >/dev/null || die "Maven is required to fetch the Kafka jars (apt-get install maven)"
    mkdir -p "$HOME_DIR"
    cat > "$HOME_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>persona-bus</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The command-line tools: console producer/consumer, topics, consumer groups. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- A logging backend, so server.log says something. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
POM
    echo "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once)"
    rm -rf "$LIBS"
    mvn -q -B -f "$HOME_DIR/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$LIBS" -DincludeScope=runtime >"$HOME_DIR/fetch.log" 2>&1 \
        || { tail -20 "$HOME_DIR/fetch.log" >&2; die "could not fetch the Kafka jars (see $HOME_DIR/fetch.log)"; }
    touch "$LIBS/.complete-$RECIPE"
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

configure() {
    cat > "$CONF" <<PROPS
# Written by scripts/kafka.sh: one node is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=6
# One machine: internal topics cannot be replicated.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Otherwise every consumer group join waits 3 s.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
}

up() {
    java_ok
    fetch
    mkdir -p "$HOME_DIR" "$INSTANCE"
    if running && port_open "$PORT"; then
        echo "kafka already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
        return 0
    fi
    port_open "$PORT" && die "port $PORT is taken by another process"
    configure
    if [ ! -f "$DATA/meta.properties" ]; then
        local cluster
        cluster=$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
        java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster" -c "$CONF" >"$INSTANCE/format.log" 2>&1 \
            || { cat "$INSTANCE/format.log" >&2; die "formatting the log dir failed"; }
    fi
    echo "starting kafka $KAFKA_VERSION on 127.0.0.1:$PORT (log: $LOG)"
    KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx768m}"
    # shellcheck disable=SC2086
    nohup java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
        -cp "$LIBS/*" kafka.Kafka "$CONF" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        if port_open "$PORT"; then
            echo "kafka is up (pid $(cat "$PIDFILE"))"
            return 0
        fi
        running || { tail -30 "$LOG" >&2; die "kafka exited during start-up"; }
        sleep 0.5
    done
    tail -30 "$LOG" >&2
    die "kafka did not open port $PORT within 60 s"
}

down() {
    if running; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
        echo "kafka stopped"
    else
        echo "kafka is not running"
    fi
    rm -f "$PIDFILE"
}

# Runs one of Kafka's command-line tools with the cached jars, e.g.
#   scripts/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
tool() {
    java_ok
    fetch
    java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$LIBS/*" "$@"
}

case "${1:-}" in
    up) up ;;
    tool) shift; tool "$@" ;;
    down) down ;;
    pid) running && cat "$PIDFILE" ;;
    status) if running && port_open "$PORT"; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
    *) die "usage: $0 up|down|status" ;;
esac
