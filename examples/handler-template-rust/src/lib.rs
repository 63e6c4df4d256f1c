//! A persona-bus handler in Rust. Copy this folder, rename the package and
//! the handler (handler.toml), and build it for `wasm32-wasip2` (README.md).
wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use persona::bus::host::{config, log};
use persona::bus::state::increment;
use persona::bus::types::Level;

struct Template;

impl Guest for Template {
    fn handle(event: Event) -> Result<(), HandlerError> {
        if event.payload.contains("\"invalid\":true") {
            // Never going to work: dead-letter it now.
            return Err(HandlerError::Reject("payload marked invalid".into()));
        }
        // A failed state write is worth another attempt.
        let seen = increment("seen", 1).map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
        let greeting = config("greeting").unwrap_or_else(|| "hello".into());
        log(
            Level::Info,
            &format!(
                "{greeting}: {} #{seen} from {}",
                event.event_type, event.source_type
            ),
        );
        // Ok marks the event handled; the state write commits with it.
        Ok(())
    }
}

export!(Template);
