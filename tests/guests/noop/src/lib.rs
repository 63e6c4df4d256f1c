//! Does nothing and succeeds: the cost of a dispatch is all that is left.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

struct Noop;

impl Guest for Noop {
    fn handle(_event: Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

export!(Noop);
