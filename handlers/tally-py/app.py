# tally-py: a persona-bus handler in Python (componentize-py), on the same
# WIT as the Rust and JavaScript ones. It counts events by type in its state
# and forwards tasks to the persona named in its manifest as
# `persona_action` events.
#
# Errors: raising Err(HandlerError_Retry(reason)) asks for another attempt;
# Err(HandlerError_Reject(reason)) dead-letters the event. (A payload with
# "reject": true or "retry": true exercises those paths in tests.)
import json

from typing import List

import wit_world
from wit_world.imports import batch, host, state, types
from componentize_py_types import Err, Ok, Result


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event) -> None:
        tally(event)

    def handle_batch(self, count: int) -> List[Result[None, types.HandlerError]]:
        # Many events per call when the manifest has [batch]: one result per
        # event taken with batch.next(), in order.
        results: List[Result[None, types.HandlerError]] = []
        while (event := batch.next()) is not None:
            try:
                tally(event)
                results.append(Ok(None))
            except Err as e:
                results.append(e)
        return results


def tally(event: types.Event) -> None:
    payload = json.loads(event.payload)
    if payload.get("reject"):
        raise Err(types.HandlerError_Reject(f"python handler rejects {event.id}"))
    if payload.get("retry") and event.attempt < 2:
        raise Err(
            types.HandlerError_Retry(
                f"python handler wants another try (attempt {event.attempt})"
            )
        )
    total = state.increment("events", 1)
    state.increment(f"type:{event.event_type}", 1)
    host.log(types.Level.INFO, f"python saw {event.event_type} #{total} (attempt {event.attempt})")
    target = host.config("target")
    if target and event.event_type.startswith("task"):
        new_id = host.publish(
            types.NewEvent(
                event_type="persona_action",
                source_type=None,
                target_persona_id=target,
                project_id=None,
                payload=json.dumps({"action": "handle", "from_event": event.id}),
                headers=[("lang", "python")],
            )
        )
        host.log(types.Level.INFO, f"forwarded as {new_id}")
