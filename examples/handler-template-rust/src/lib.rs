//! A persona-bus handler in Rust. Copy this folder, rename the package and
//! the handler (handler.toml), and build it for `wasm32-wasip2` (README.md).
wit_bindgen::generate!({ path: "../../wit", world: "batch-handler" });

use persona::bus::batch::next;
use persona::bus::host::{config, log};
use persona::bus::state::increment;
use persona::bus::types::Level;

struct Template;

fn handle_one(event: &Event) -> Result<(), HandlerError> {
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

impl Guest for Template {
    /// One event per call (the default).
    fn handle(event: Event) -> Result<(), HandlerError> {
        handle_one(&event)
    }

    /// Many events per call, when handler.toml has a `[batch]` section.
    /// Take each event with `next()`; what happens after it returns (state
    /// writes, publishes, logs) belongs to that event. One result per
    /// event, in order: an error for one retries or dead-letters it alone
    /// while the others commit. A panic fails the whole call: its events
    /// then run again one by one, so only the bad one is charged.
    fn handle_batch(count: u32) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(count as usize);
        while let Some(event) = next() {
            results.push(handle_one(&event));
        }
        results
    }
}

export!(Template);
