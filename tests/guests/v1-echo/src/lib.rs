//! The echo guest built against the older contract, `persona:bus@0.1.0`:
//! it imports `persona:bus/state@0.1.0`, which the host still links. Keeps
//! each payload under the event's id and counts `done`.
wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "handler" });

use persona::bus::state::{increment, set};

struct Echo;

impl Guest for Echo {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let retry = |e| HandlerError::Retry(format!("{e:?}"));
        set(&event.id, event.payload.as_bytes()).map_err(retry)?;
        increment("done", 1).map_err(retry)?;
        Ok(())
    }
}

export!(Echo);
