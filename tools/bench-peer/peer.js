// The migration plan's own stack, as a benchmark peer (`make bench-peer`):
// a KafkaJS consumer (the plan's `kafkaConsumer.ts`) with handler dispatch,
// writing processed results back to SQLite with better-sqlite3.
//
// It does the work persona-bus does for each record, the way the plan's
// code would do it, and nothing on purpose to slow it down:
// - decode the event (JSON, the wire format of persona-bus's kafka/wire.rs);
// - match it against the subscriptions (the same two: `noop` on every
//   event, `quarter` on task_completed);
// - skip handlers the processed ledger says already ran (redelivery);
// - run each handler (a JavaScript function that does nothing, as the noop
//   guest does nothing);
// - in one SQLite transaction per batch: the event row with its final
//   status, a ledger row and an execution row per handler run;
// - commit the batch's offsets once that transaction is durable.
//
// Output: `joined` when the group has assigned partitions, then one JSON
// line on stdout when `--n` events are handled (latency of all but the
// first `--skip`):
//   {"handled", "first_ms", "last_ms", "latency_us": {p50, p90, p99, max}}
// (first_ms: the first batch's start; last_ms: the last batch's commit)
// (latency: from the event's created_at, the generator's send time in
// microseconds, to its transaction's commit).
'use strict';

const { Kafka, logLevel } = require('kafkajs');
const Database = require('better-sqlite3');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (fallback === undefined) {
    console.error(`peer.js: --${name} is required`);
    process.exit(2);
  }
  return fallback;
}

const brokers = arg('brokers').split(',');
const topic = arg('topic');
const group = arg('group');
const want = Number(arg('n'));
// The first `--skip` events are handled but their latency is not counted
// (the benchmark's warm-up, the same for persona-bus).
const skip = Number(arg('skip', '0'));
const dbPath = arg('db');

// The schema of the bus the plan migrates (persona_events) and the plan's
// processed results: a ledger and executions, keyed by event id.
const db = new Database(dbPath);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.exec(`
  CREATE TABLE IF NOT EXISTS persona_events (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL DEFAULT 'default',
    event_type TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT,
    target_persona_id TEXT,
    payload TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    error_message TEXT,
    processed_at TEXT,
    created_at TEXT NOT NULL
  );
  CREATE TABLE IF NOT EXISTS persona_processed (
    event_id TEXT NOT NULL,
    handler TEXT NOT NULL,
    outcome TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (event_id, handler)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS persona_executions (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    handler TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_us INTEGER NOT NULL,
    started_at TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS idx_persona_executions_event ON persona_executions(event_id);
`);

const upsertEvent = db.prepare(`
  INSERT INTO persona_events (id, project_id, event_type, source_type, source_id, target_persona_id,
                              payload, status, processed_at, created_at)
  VALUES (@id, @project_id, @event_type, @source_type, @source_id, @target_persona_id,
          @payload, @status, @processed_at, @created_at)
  ON CONFLICT (id) DO UPDATE SET status = excluded.status, processed_at = excluded.processed_at`);
const alreadyDone = db.prepare(
  'SELECT 1 FROM persona_processed WHERE event_id = ? AND handler = ?');
const insertLedger = db.prepare(
  `INSERT INTO persona_processed (event_id, handler, outcome, processed_at)
   VALUES (?, ?, 'completed', ?) ON CONFLICT DO NOTHING`);
const insertExecution = db.prepare(
  `INSERT INTO persona_executions (event_id, handler, outcome, duration_us, started_at)
   VALUES (?, ?, 'completed', ?, ?)`);

const handlers = {
  noop: () => {},
  quarter: () => {},
};
const subscriptions = [
  { handler: 'noop', eventType: '*' },
  { handler: 'quarter', eventType: 'task_completed' },
];
const matches = (sub, e) => sub.eventType === '*' || sub.eventType === e.event_type;

// Runs the handlers of a batch and writes everything in one transaction.
const commitBatch = db.transaction((events) => {
  const now = new Date().toISOString();
  for (const e of events) {
    for (const sub of subscriptions) {
      if (!matches(sub, e) || alreadyDone.get(e.id, sub.handler)) continue;
      const t = process.hrtime.bigint();
      handlers[sub.handler](e);
      const us = Number((process.hrtime.bigint() - t) / 1000n);
      insertExecution.run(e.id, sub.handler, us, now);
      insertLedger.run(e.id, sub.handler, now);
    }
    upsertEvent.run({
      id: e.id,
      project_id: e.project_id || 'default',
      event_type: e.event_type,
      source_type: e.source_type,
      source_id: e.source_id ?? null,
      target_persona_id: e.target_persona_id ?? null,
      payload: JSON.stringify(e.payload ?? null),
      status: 'completed',
      processed_at: now,
      created_at: e.created_at,
    });
  }
});

// created_at as microseconds since the epoch (RFC 3339 with up to 6 digits).
function createdUs(text) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(text);
  if (!m) return null;
  const frac = (m[2] || '').padEnd(6, '0').slice(0, 6);
  return Date.parse(`${m[1]}Z`) * 1000 + Number(frac);
}

const latencies = [];
let handled = 0;
let firstMs = null;
let lastMs = null;

const kafka = new Kafka({ clientId: 'bench-peer', brokers, logLevel: logLevel.ERROR });
const consumer = kafka.consumer({ groupId: group });

function quantile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function finish() {
  latencies.sort((a, b) => a - b);
  process.stdout.write(`${JSON.stringify({
    handled,
    first_ms: firstMs,
    last_ms: lastMs,
    latency_us: {
      p50: quantile(latencies, 0.5),
      p90: quantile(latencies, 0.9),
      p99: quantile(latencies, 0.99),
      max: latencies.length ? latencies[latencies.length - 1] : 0,
    },
  })}\n`);
  // Every offset is committed already; leaving without the group's
  // goodbye is fine for a throwaway group (disconnecting from inside
  // eachBatch would wait for this very batch).
  db.close();
  process.exit(0);
}

async function main() {
  // "joined" once the group has given this consumer its partitions, so a
  // latency run starts its generator only then (as it does for the host).
  consumer.on(consumer.events.GROUP_JOIN, () => process.stdout.write('joined\n'));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
      if (!isRunning() || isStale() || batch.messages.length === 0) return;
      const events = [];
      for (const m of batch.messages) {
        try {
          events.push(JSON.parse(m.value.toString()));
        } catch (err) {
          console.error(`peer.js: undecodable record at ${batch.partition}:${m.offset}: ${err.message}`);
        }
      }
      if (firstMs === null) firstMs = Date.now();
      commitBatch(events);
      const doneUs = Date.now() * 1000;
      for (const [i, e] of events.entries()) {
        const sent = createdUs(e.created_at);
        // `handled` counts the batches before this one.
        if (handled + i >= skip && sent !== null) latencies.push(doneUs - sent);
      }
      const last = batch.messages[batch.messages.length - 1].offset;
      resolveOffset(last);
      await consumer.commitOffsets([
        { topic: batch.topic, partition: batch.partition, offset: (BigInt(last) + 1n).toString() },
      ]);
      await heartbeat();
      lastMs = Date.now();
      handled += events.length;
      if (handled >= want) await finish();
    },
  });
}

main().catch((err) => {
  console.error(`peer.js: ${err.stack || err}`);
  process.exit(1);
});
