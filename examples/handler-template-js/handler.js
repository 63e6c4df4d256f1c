// A persona-bus handler in JavaScript. Copy this folder, rename the handler
// in handler.toml, and build it (see README.md).
//
// Imports come from the WIT contract (wit/bus.wit): interface functions by
// their camelCase names, records as objects with camelCase fields, s64 as
// BigInt, option<T> as T | undefined, a result's error as an exception.
import { log, config } from 'persona:bus/host@0.1.0';
import { increment } from 'persona:bus/state@0.1.0';

export function handle(event) {
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
