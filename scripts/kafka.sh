#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft: broker and controller in one
# process) on 127.0.0.1:9092, for development, tests and benchmarks.
#
#   scripts/kafka.sh up      fetch the jars once (Maven Central), format once, start, wait until ready
#   scripts/kafka.sh up-secure   a second broker with TLS and authentication (below)
#   scripts/kafka.sh up-cluster  three more brokers forming one cluster (below)
#   scripts/kafka.sh cluster-pid N / cluster-start N   one cluster node (tests kill -9 and restart it)
#   scripts/kafka.sh down    stop them
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
# The secure broker (`up-secure`): its own instance folder and ports, so it
# runs beside the plaintext one. SASL_SSL (SCRAM-SHA-512, also SCRAM-SHA-256
# and PLAIN) on 9096, SSL with client certificates required on 9097.
SECURE_DIR="$HOME_DIR/secure"
SECURE_SASL_PORT=9096
SECURE_MTLS_PORT=9097
SECURE_CONTROLLER_PORT=9098
# The cluster (`up-cluster`): three KRaft nodes, each broker and controller,
# clients on 9192-9194, controllers on 9292-9294.
CLUSTER_DIR="$HOME_DIR/cluster"
CLUSTER_VOTERS="1@127.0.0.1:9292,2@127.0.0.1:9293,3@127.0.0.1:9294"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SECURE_ENV="${KAFKA_SECURE_ENV:-$REPO/build/kafka-secure.env}"

die() { echo "kafka.sh: $*" >&2; exit 1; }
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

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

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The settings of a broker that is alone on its machine (the plaintext and
# the secure one), after its listeners.
single_node_tail() {
    cat <<PROPS
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
# Tests and benchmarks drop their topics as they go, and Kafka deletes a
# dropped topic's files 60 s later by default: inside whatever runs next (a
# latency window right after the backlog runs took p99 41 ms while ~200 logs
# were deleted). After 1 s the deletion falls in the teardown that caused it.
log.segment.delete.delay.ms=1000
auto.create.topics.enable=true
PROPS
}

configure() {
    if [ "${KAFKA_SECURE:-}" = 1 ]; then
        configure_secure
        return
    fi
    if [ -n "${KAFKA_CLUSTER_NODE:-}" ]; then
        configure_cluster_node
        return
    fi
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
PROPS
    single_node_tail >> "$CONF"
}

# Certificates and secrets of the secure broker, made once per instance
# (its SCRAM users are written when its log dir is formatted): a CA, the
# broker's certificate (for 127.0.0.1 only, so dialling `localhost` is a
# hostname mismatch), a client certificate with an encrypted key for mutual
# TLS, and an unrelated CA for tests of a CA that does not match.
make_tls() {
    local tls="$SECURE_DIR/tls"
    [ -f "$tls/.complete" ] && return 0
    command -v openssl >/dev/null || die "openssl is required for the secure broker (apt-get install openssl)"
    command -v keytool >/dev/null || die "keytool (Java 17) is required for the secure broker"
    # New secrets need a new log dir: its SCRAM users are formatted in.
    rm -rf "$tls" "$SECURE_DIR/data" && mkdir -p "$tls"
    (
        cd "$tls"
        umask 077
        local store key scram
        store=$(openssl rand -hex 16)
        key=$(openssl rand -hex 16)
        scram=$(openssl rand -hex 16)
        printf 'STORE_PASSWORD=%s\nCLIENT_KEY_PASSWORD=%s\nSCRAM_PASSWORD=%s\n' "$store" "$key" "$scram" > secrets
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=persona-bus test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\n' > broker.ext
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile broker.ext -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
            -out broker.p12 -passout "pass:$store"
        keytool -importcert -noprompt -alias ca -file ca.pem -keystore truststore.p12 \
            -storetype PKCS12 -storepass "$store" >/dev/null 2>&1
        openssl req -newkey rsa:2048 -nodes -subj "/CN=persona-device" -keyout client.plain.key \
            -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -out client.pem 2>/dev/null
        openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.plain.key -out client.key -passout "pass:$key"
        rm -f client.plain.key ./*.csr
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=an unrelated CA" \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null
        touch .complete
    ) || die "making the secure broker's certificates failed"
}

configure_secure() {
    local tls="$SECURE_DIR/tls"
    # shellcheck disable=SC1091
    . "$tls/secrets"
    cat > "$CONF" <<PROPS
# Written by scripts/kafka.sh up-secure: TLS and authentication.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=SASL_SSL://127.0.0.1:$SECURE_SASL_PORT,SSL://127.0.0.1:$SECURE_MTLS_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$SECURE_SASL_PORT,SSL://127.0.0.1:$SECURE_MTLS_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
# The broker talks to itself over the mutual-TLS listener, with its own certificate.
inter.broker.listener.name=SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$tls/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_persona="$SCRAM_PASSWORD";
PROPS
    single_node_tail >> "$CONF"
}

# What a client needs, as a file to source: the plan's KAFKA_* variables
# for the SASL_SSL listener, and the mutual-TLS listener's under
# KAFKA_MTLS_* (copy them to the KAFKA_* names to use it).
write_secure_env() {
    local tls="$SECURE_DIR/tls"
    # shellcheck disable=SC1091
    . "$tls/secrets"
    mkdir -p "$(dirname "$SECURE_ENV")"
    umask 077
    cat > "$SECURE_ENV" <<ENV
# Written by scripts/kafka.sh up-secure. Source it: . $SECURE_ENV
export KAFKA_BROKERS=127.0.0.1:$SECURE_SASL_PORT
export KAFKA_SSL_ENABLED=true
export KAFKA_SSL_CA_LOCATION=$tls/ca.pem
export KAFKA_SASL_MECHANISM=SCRAM-SHA-512
export KAFKA_SASL_USERNAME=persona
export KAFKA_SASL_PASSWORD=$SCRAM_PASSWORD
# Mutual TLS (no SASL) on the other listener:
export KAFKA_MTLS_BROKERS=127.0.0.1:$SECURE_MTLS_PORT
export KAFKA_MTLS_SSL_CA_LOCATION=$tls/ca.pem
export KAFKA_MTLS_SSL_CERT_LOCATION=$tls/client.pem
export KAFKA_MTLS_SSL_KEY_LOCATION=$tls/client.key
export KAFKA_MTLS_SSL_KEY_PASSWORD=$CLIENT_KEY_PASSWORD
# A CA that did not sign the broker's certificate (for tests):
export KAFKA_TEST_OTHER_CA_LOCATION=$tls/other-ca.pem
ENV
    echo "wrote $SECURE_ENV"
}

configure_cluster_node() {
    cat > "$CONF" <<PROPS
# Written by scripts/kafka.sh up-cluster: node $KAFKA_CLUSTER_NODE of 3.
process.roles=broker,controller
node.id=$KAFKA_CLUSTER_NODE
controller.quorum.voters=$CLUSTER_VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# A killed node's partitions get new leaders within seconds.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
PROPS
}

# One cluster node: up, or its pid.
cluster_node() {
    local n="$1" action="$2"
    case "$n" in 1|2|3) ;; *) die "cluster nodes are 1, 2 and 3" ;; esac
    KAFKA_CLUSTER_NODE="$n" KAFKA_INSTANCE_DIR="$CLUSTER_DIR/node$n" \
        KAFKA_DATA_DIR="$CLUSTER_DIR/node$n/data" KAFKA_PORT="919$((n + 1))" \
        KAFKA_CONTROLLER_PORT="929$((n + 1))" KAFKA_HEAP="-Xms128m -Xmx512m" "$0" "$action"
}

up_cluster() {
    java_ok
    fetch
    mkdir -p "$CLUSTER_DIR"
    # One cluster id for the three log dirs, kept beside them.
    [ -f "$CLUSTER_DIR/cluster.id" ] \
        || java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid > "$CLUSTER_DIR/cluster.id"
    # Started in the background together: each waits for a quorum of the others.
    local pids=()
    for n in 1 2 3; do
        cluster_node "$n" up & pids+=($!)
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ "$failed" = 0 ] || die "the cluster did not start"
    echo "cluster up: 127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194"
}

up_secure() {
    java_ok
    fetch
    make_tls
    KAFKA_SECURE=1 KAFKA_INSTANCE_DIR="$SECURE_DIR" KAFKA_DATA_DIR="$SECURE_DIR/data" \
        KAFKA_PORT="$SECURE_SASL_PORT" KAFKA_CONTROLLER_PORT="$SECURE_CONTROLLER_PORT" "$0" up
    write_secure_env
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
        if [ -n "${KAFKA_CLUSTER_NODE:-}" ]; then
            cluster=$(cat "$CLUSTER_DIR/cluster.id")
        else
            cluster=$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
        fi
        local scram=()
        if [ "${KAFKA_SECURE:-}" = 1 ]; then
            # shellcheck disable=SC1091
            . "$SECURE_DIR/tls/secrets"
            scram=(--add-scram "SCRAM-SHA-512=[name=persona,password=$SCRAM_PASSWORD]"
                   --add-scram "SCRAM-SHA-256=[name=persona,password=$SCRAM_PASSWORD]")
        fi
        java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster" -c "$CONF" "${scram[@]}" >"$INSTANCE/format.log" 2>&1 \
            || { cat "$INSTANCE/format.log" >&2; die "formatting the log dir failed"; }
    fi
    echo "starting kafka $KAFKA_VERSION on 127.0.0.1:$PORT (log: $LOG)"
    KAFKA_HEAP="${KAFKA_HEAP:--Xms256m -Xmx768m}"
    # shellcheck disable=SC2086
    nohup java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
        -cp "$LIBS/*" kafka.Kafka "$CONF" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    await_up "kafka" 120 0.5 port_open "$PORT"
}

down() {
    stop_service "kafka" 60 0.5
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
    up-secure) up_secure ;;
    up-cluster) up_cluster ;;
    cluster-start) cluster_node "${2:-}" up ;;
    cluster-pid) cluster_node "${2:-}" pid ;;
    tool) shift; tool "$@" ;;
    down)
        down
        if [ -z "${KAFKA_INSTANCE_DIR:-}" ]; then
            if [ -f "$SECURE_DIR/kafka.pid" ]; then KAFKA_INSTANCE_DIR="$SECURE_DIR" "$0" down; fi
            for n in 1 2 3; do
                if [ -f "$CLUSTER_DIR/node$n/kafka.pid" ]; then KAFKA_INSTANCE_DIR="$CLUSTER_DIR/node$n" "$0" down; fi
            done
        fi
        ;;
    # Stops this broker, deletes its data folder and starts it empty.
    # Every test and benchmark run leaves topics behind; thousands of
    # partitions slow the broker down (a backlog benchmark by a fifth).
    reset) down; rm -rf "$DATA"; up ;;
    pid) running && cat "$PIDFILE" ;;
    status) if running && port_open "$PORT"; then echo "running (pid $(cat "$PIDFILE"))"; else echo "not running"; exit 1; fi ;;
    *) die "usage: $0 up|up-secure|up-cluster|down|reset|status|pid|cluster-pid N|cluster-start N|tool" ;;
esac
