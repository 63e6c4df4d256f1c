// tally-js: a persona-bus handler in JavaScript, on the same WIT as the Rust
// ones. It counts events by type in its state and forwards tasks to the
// persona named in its manifest as `persona_action` events.
//
// Errors: throwing { tag: 'retry', val: reason } asks for another attempt;
// { tag: 'reject', val: reason } dead-letters the event. (A payload with
// `reject: true` or `retry: true` exercises those paths in tests.)
import { log, config, publish } from 'persona:bus/host@0.2.0';
import { increment } from 'persona:bus/state@0.2.0';
import { next } from 'persona:bus/batch@0.2.0';

export function handle(event) {
  tally(event);
}

// Many events per call when the manifest has [batch]: one result per event
// taken with next(), in order; what happens after next() is that event's.
export function handleBatch(count) {
  const results = [];
  for (let event = next(); event !== undefined; event = next()) {
    try {
      tally(event);
      results.push({ tag: 'ok' });
    } catch (e) {
      if (e?.tag !== 'retry' && e?.tag !== 'reject') throw e;
      results.push({ tag: 'err', val: e });
    }
  }
  return results;
}

function tally(event) {
  const payload = JSON.parse(event.payload);
  if (payload.reject) {
    throw { tag: 'reject', val: `js handler rejects ${event.id}` };
  }
  if (payload.retry && event.attempt < 2) {
    throw { tag: 'retry', val: `js handler wants another try (attempt ${event.attempt})` };
  }
  const total = increment('events', 1n);
  increment(`type:${event.eventType}`, 1n);
  log('info', `js saw ${event.eventType} #${total} (attempt ${event.attempt})`);
  const target = config('target');
  if (target && event.eventType.startsWith('task')) {
    const id = publish({
      eventType: 'persona_action',
      sourceType: undefined,
      targetPersonaId: target,
      projectId: undefined,
      payload: JSON.stringify({ action: 'handle', from_event: event.id }),
      headers: [['lang', 'js']],
    });
    log('info', `forwarded as ${id}`);
  }
}
