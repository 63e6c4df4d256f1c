//! Sleeps `sleep_ms` (config), then counts the event twice in its state: in
//! a total and under its own id. A per-event count above 1 would mean the
//! host applied a handler's effects twice.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::config;
use persona::bus::state::increment;

struct Slow;

impl Guest for Slow {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let ms: u64 = config("sleep_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let fail = |e| HandlerError::Retry(format!("{e:?}"));
        increment("count", 1).map_err(fail)?;
        increment(&format!("seen:{}", event.id), 1).map_err(fail)?;
        Ok(())
    }
}

export!(Slow);
