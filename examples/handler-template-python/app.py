# A persona-bus handler in Python, built into a WebAssembly component with
# componentize-py against the bus's WIT contract (wit/bus.wit). Copy this
# folder (or run `persona-bus new my-handler --lang python`), rename the
# handler in its manifest, and build it (README.md).
#
# Imports come from the WIT contract: `wit_world.imports.host` (log,
# publish, config), `wit_world.imports.state` (get, set, delete,
# increment) and `wit_world.imports.types`. Raise
# `Err(HandlerError_Retry(...))` for another attempt, or
# `Err(HandlerError_Reject(...))` to dead-letter the event.
import wit_world
from wit_world.imports import host, state, types
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event) -> None:
        n = state.increment("seen", 1)
        greeting = host.config("greeting") or "hello"
        host.log(
            types.Level.INFO,
            f"{greeting}: {event.event_type} #{n} from {event.source_type}",
        )
        if event.event_type == "reject-me":
            raise Err(types.HandlerError_Reject("asked to reject"))
