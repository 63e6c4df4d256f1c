//! Router handler: turns incoming work (webhooks, new tasks) into a
//! `persona_action` addressed to the persona named in its manifest's
//! `[config] target`, the way the original bus routed work between personas.
wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use persona::bus::host::{config, log, publish};
use persona::bus::types::{Level, NewEvent, PublishError};

struct Router;

impl Guest for Router {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let Some(target) = config("target") else {
            // A manifest without a target can never route: dead-letter rather than retry.
            return Err(HandlerError::Reject(
                "config key `target` is not set".into(),
            ));
        };
        let payload = format!(
            r#"{{"action":"handle","from_event":"{}","from_type":"{}","input":{}}}"#,
            event.id, event.event_type, event.payload
        );
        let action = NewEvent {
            event_type: "persona_action".into(),
            source_type: None,
            target_persona_id: Some(target.clone()),
            project_id: None,
            payload,
            headers: vec![("routed-by".into(), "router".into())],
        };
        match publish(&action) {
            Ok(id) => {
                log(
                    Level::Info,
                    &format!(
                        "routed {} {} -> {target} as {id}",
                        event.event_type, event.id
                    ),
                );
                Ok(())
            }
            // The loop guard is the host telling us to stop: not worth a retry.
            Err(PublishError::ChainTooDeep(depth)) => {
                log(
                    Level::Warn,
                    &format!("not routing {}: chain depth {depth}", event.id),
                );
                Ok(())
            }
            Err(e) => Err(HandlerError::Reject(format!("publish refused: {e:?}"))),
        }
    }
}

export!(Router);
