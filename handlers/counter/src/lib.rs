//! Counter handler: counts the `persona_action` events addressed to it, in
//! total and per project, in its durable key-value state. Increments are
//! committed with the record that the event was handled, so a count is exact
//! even across crashes and redeliveries.
wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use persona::bus::host::log;
use persona::bus::state::increment;
use persona::bus::types::Level;

struct Counter;

impl Guest for Counter {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let bump = |key: &str| increment(key, 1).map_err(|e| HandlerError::Retry(format!("{e:?}")));
        let total = bump("count")?;
        let in_project = bump(&format!("project:{}", event.project_id))?;
        log(
            Level::Info,
            &format!(
                "count = {total} ({in_project} in project {})",
                event.project_id
            ),
        );
        Ok(())
    }
}

export!(Counter);
