#!/usr/bin/env bash
# Two devices, one Kafka: an event published on device A is handled on
# device B. Each "device" is a persona-bus host with its own data dir and
# KAFKA_CLIENT_ID, in the same consumer group, so the topics' partitions are
# split between them. Run from the repository root after `make build`:
#
#   make kafka-up && examples/cross-device/run.sh
set -euo pipefail
BIN=${BIN:-target/release/persona-bus}
WORK=$(mktemp -d)
trap 'kill $A $B 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
export KAFKA_ENABLED=true KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
export KAFKA_CONSUMER_GROUP="example-$(date +%s).processor" KAFKA_AUTO_OFFSET_RESET=earliest
export RUST_LOG=warn

KAFKA_CLIENT_ID=device-a $BIN --data-dir "$WORK/a" run --handlers build/handlers --http-addr 127.0.0.1:8081 & A=$!
KAFKA_CLIENT_ID=device-b $BIN --data-dir "$WORK/b" run --handlers build/handlers --http-addr 127.0.0.1:8082 & B=$!
echo "waiting for both devices to join the group..."
until KAFKA_CLIENT_ID=device-a $BIN --data-dir "$WORK/a" status 2>/dev/null | grep -q "2 member(s)"; do sleep 1; done
sleep 3 # the rebalance hands device B its partitions

echo "publishing 12 events on device A, one project each"
for i in $(seq 1 12); do
    KAFKA_CLIENT_ID=device-a $BIN --data-dir "$WORK/a" publish --event-type task_created \
        --source-type example --project "project-$i" --payload "{\"n\":$i}" >/dev/null
done
sleep 5
echo
echo "device B handled these (its ledger):"
sqlite3 "$WORK/b/bus.db" "SELECT e.project_id, p.handler, p.outcome FROM persona_processed p JOIN persona_events e ON e.id = p.event_id ORDER BY 1" 2>/dev/null \
    || KAFKA_CLIENT_ID=device-b $BIN --data-dir "$WORK/b" events list --event-type task_created
echo
echo "device A sees every one of its events completed (B's via its execution records):"
KAFKA_CLIENT_ID=device-a $BIN --data-dir "$WORK/a" events list --event-type task_created
KAFKA_CLIENT_ID=device-a $BIN --data-dir "$WORK/a" status
