//! Allocates and touches memory until the host's memory limit stops it.
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

struct MemBomb;

impl Guest for MemBomb {
    fn handle(_event: Event) -> Result<(), HandlerError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(MemBomb);
