// A persona-bus handler in JavaScript. Copy this folder, rename the handler
// in handler.toml, and build it (see README.md).
//
// Imports come from the WIT contract (wit/bus.wit): interface functions by
// their camelCase names, records as objects with camelCase fields, s64 as
// BigInt, option<T> as T | undefined, a result's error as an exception.
import { log, config } from 'persona:bus/host@0.2.0';
import { increment } from 'persona:bus/state@0.2.0';
import { next } from 'persona:bus/batch@0.2.0';

// One event per call (the default).
export function handle(event) {
  handleOne(event);
}

// Many events per call, when handler.toml has a [batch] section: it pays
// the cost of a call into JavaScript once per batch. Take each event with
// next(); what you do after next() returns (state writes, publishes, logs)
// belongs to that event. Return one result per event, in order: an error
// for one event retries or dead-letters it alone while the others commit.
export function handleBatch(count) {
  const results = [];
  for (let event = next(); event !== undefined; event = next()) {
    try {
      handleOne(event);
      results.push({ tag: 'ok' });
    } catch (e) {
      // A bug (not a retry or reject) fails the whole call: its events
      // then run again one by one, so only the bad one is charged.
      if (e?.tag !== 'retry' && e?.tag !== 'reject') throw e;
      results.push({ tag: 'err', val: e });
    }
  }
  return results;
}

function handleOne(event) {
  // event: { id, projectId, eventType, sourceType, sourceId, targetPersonaId,
  //          payload (JSON text), headers, schemaVersion, createdAt,
  //          chainDepth, origin, attempt }
  const payload = JSON.parse(event.payload);
  if (payload.invalid) {
    // Never going to work: dead-letter it now.
    throw { tag: 'reject', val: 'payload marked invalid' };
  }
  const seen = increment('seen', 1n);
  const greeting = config('greeting') ?? 'hello';
  log('info', `${greeting}: ${event.eventType} #${seen} from ${event.sourceType}`);
  // Returning normally marks the event handled; state writes commit with it.
}
