//! Config `mode = "reject"` rejects every event. Otherwise it asks for a
//! retry until the attempt number reaches config `succeed_on` (never, when
//! unset), then succeeds and counts the event in its state.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::config;
use persona::bus::state::increment;

struct Flaky;

impl Guest for Flaky {
    fn handle(event: Event) -> Result<(), HandlerError> {
        if config("mode").as_deref() == Some("reject") {
            return Err(HandlerError::Reject(format!("rejecting {}", event.id)));
        }
        let succeed_on: Option<u32> = config("succeed_on").and_then(|v| v.parse().ok());
        match succeed_on {
            Some(n) if event.attempt >= n => {
                increment("done", 1).map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
                Ok(())
            }
            _ => Err(HandlerError::Retry(format!(
                "attempt {} is not enough",
                event.attempt
            ))),
        }
    }
}

export!(Flaky);
