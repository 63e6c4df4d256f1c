//! Audit handler: subscribed to every event type, it logs each event and keeps
//! per-type counts in its key-value state, so an operator can see at a glance
//! what flowed through the bus.
wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use persona::bus::host::log;
use persona::bus::state::increment;
use persona::bus::types::Level;

struct Audit;

impl Guest for Audit {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let total = increment("events", 1).map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
        increment(&format!("type:{}", event.event_type), 1)
            .map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
        log(
            Level::Info,
            &format!(
                "#{total} {} from {}:{} in project {} (depth {}, attempt {}): {}",
                event.event_type,
                event.source_type,
                event.source_id.as_deref().unwrap_or("-"),
                event.project_id,
                event.chain_depth,
                event.attempt,
                event.payload,
            ),
        );
        Ok(())
    }
}

export!(Audit);
