//! Never returns: the host must stop it at its timeout (epoch interruption).
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

struct Spin;

impl Guest for Spin {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let mut n: u64 = event.payload.len() as u64;
        loop {
            // Keep the loop observable so the optimiser cannot remove it.
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Spin);
