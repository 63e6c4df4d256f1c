//! Publishes its own event type over and over. Two copies of it under
//! different names answer each other forever unless the host's chain-depth
//! guard stops them; within one call it floods until the per-call publish
//! limit refuses it.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::{config, publish};
use persona::bus::types::{NewEvent, PublishError};

struct PublishLoop;

impl Guest for PublishLoop {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let per_call: u32 = config("per_call")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX);
        for i in 0..per_call {
            let next = NewEvent {
                event_type: event.event_type.clone(),
                source_type: None,
                target_persona_id: None,
                project_id: None,
                payload: format!(r#"{{"i":{i}}}"#),
                headers: vec![],
            };
            match publish(&next) {
                Ok(_) => {}
                Err(PublishError::ChainTooDeep(_)) | Err(PublishError::TooMany(_)) => return Ok(()),
                Err(PublishError::Invalid(why)) => return Err(HandlerError::Reject(why)),
            }
        }
        Ok(())
    }
}

export!(PublishLoop);
