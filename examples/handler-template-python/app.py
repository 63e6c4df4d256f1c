# A persona-bus handler in Python, built into a WebAssembly component with
# componentize-py against the bus's WIT contract (wit/bus.wit). Copy this
# folder (or run `persona-bus new my-handler --lang python`), rename the
# handler in its manifest, and build it (README.md).
#
# Imports come from the WIT contract: `wit_world.imports.host` (log,
# publish, config), `wit_world.imports.state` (get, set, delete,
# increment), `wit_world.imports.batch` (next) and
# `wit_world.imports.types`. Raise `Err(HandlerError_Retry(...))` for
# another attempt, or `Err(HandlerError_Reject(...))` to dead-letter the
# event.
from typing import List

import wit_world
from wit_world.imports import batch, host, state, types
from componentize_py_types import Err, Ok, Result


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event) -> None:
        handle_one(event)

    def handle_batch(self, count: int) -> List[Result[None, types.HandlerError]]:
        # Many events per call, when handler.toml has a [batch] section: the
        # cost of a call into Python is paid once per batch. Take each event
        # with batch.next(); what happens after it returns (state writes,
        # publishes, logs) belongs to that event. One result per event, in
        # order: an error for one retries or dead-letters it alone while the
        # others commit. Any other exception fails the whole call, and its
        # events run again one by one, so only the bad one is charged.
        results: List[Result[None, types.HandlerError]] = []
        while (event := batch.next()) is not None:
            try:
                handle_one(event)
                results.append(Ok(None))
            except Err as e:
                results.append(e)
        return results


def handle_one(event: types.Event) -> None:
    n = state.increment("seen", 1)
    greeting = host.config("greeting") or "hello"
    host.log(
        types.Level.INFO,
        f"{greeting}: {event.event_type} #{n} from {event.source_type}",
    )
    if event.event_type == "reject-me":
        raise Err(types.HandlerError_Reject("asked to reject"))
