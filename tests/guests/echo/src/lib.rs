//! Keeps the payload of each event it handles in its state, under the
//! event's id: tests compare it with what the publisher sent (for example
//! after an Avro round trip through Kafka).
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::state::set;

struct Echo;

impl Guest for Echo {
    fn handle(event: Event) -> Result<(), HandlerError> {
        set(&event.id, event.payload.as_bytes()).map_err(|e| HandlerError::Retry(format!("{e:?}")))
    }
}

export!(Echo);
