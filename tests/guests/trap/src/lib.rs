//! Panics on every event; a Rust panic in a guest is a wasm trap.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

struct Trap;

impl Guest for Trap {
    fn handle(event: Event) -> Result<(), HandlerError> {
        panic!("guest-trap refuses event {}", event.id);
    }
}

export!(Trap);
