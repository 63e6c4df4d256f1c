// Test guest (JavaScript): fetches config('url') with the standard fetch()
// (componentize-js over wasi:http) and logs what came back. An async export:
// the host waits for the promise. A refused destination makes fetch throw,
// and the handler rejects the event with the reason.
import { log, config } from 'persona:bus/host@0.2.0';

export async function handle(event) {
  let r;
  try {
    r = await fetch(config('url'));
  } catch (e) {
    throw { tag: 'reject', val: `fetch failed: ${e}` };
  }
  const body = await r.text();
  log('info', `fetched ${r.status} ${body.length} bytes`);
}
