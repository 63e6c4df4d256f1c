//! One guest, several behaviours, chosen by config `mode`:
//! - `recurse`: recursion without end (the guest's stack overflows: a trap)
//! - `logflood`: logs in a loop (stopped by `limits.max_log_lines`)
//! - `bigoutput`: publishes ever larger payloads (stopped by `limits.max_output_bytes`)
//! - `statics`: counts calls in a static and stores the count, so a test can
//!   tell a reused instance (counts up) from a fresh one (always 1)
//! - `sleep`: sleeps config `sleep_ms` (`std::thread::sleep`: a
//!   `wasi:clocks` pollable the guest blocks on inside the host), then
//!   counts the event in its state
//! - `stdin`: waits for input on stdin that never comes (reads, and on
//!   end-of-input sleeps a little and reads again)
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::{config, log, publish};
use persona::bus::state::{increment, set};
use persona::bus::types::{Level, NewEvent};
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);

struct Hostile;

// Endless on purpose: the host must stop the stack overflow as a trap.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64, pad: [u8; 64]) -> u64 {
    let local = std::hint::black_box(pad);
    recurse(depth + 1, local).wrapping_add(local[(depth % 64) as usize] as u64)
}

impl Guest for Hostile {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match config("mode").as_deref() {
            Some("recurse") => {
                std::hint::black_box(recurse(0, [7; 64]));
                Ok(())
            }
            Some("logflood") => loop {
                log(Level::Debug, &format!("flooding on {}", event.id));
            },
            Some("bigoutput") => {
                for kib in 1.. {
                    let payload = format!("\"{}\"", "x".repeat(kib * 1024));
                    let next = NewEvent {
                        event_type: "big".into(),
                        source_type: None,
                        target_persona_id: None,
                        project_id: None,
                        payload,
                        headers: vec![],
                    };
                    if let Err(e) = publish(&next) {
                        return Err(HandlerError::Reject(format!("{e:?}")));
                    }
                }
                Ok(())
            }
            Some("statics") => {
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                set("calls_seen_by_instance", n.to_string().as_bytes())
                    .map_err(|e| HandlerError::Retry(format!("{e:?}")))
            }
            Some("sleep") => {
                let ms: u64 = config("sleep_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                increment("slept", 1).map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
                Ok(())
            }
            Some("stdin") => {
                use std::io::Read;
                let mut buf = [0u8; 64];
                loop {
                    match std::io::stdin().read(&mut buf) {
                        Ok(n) if n > 0 => return Ok(()),
                        _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            }
            other => Err(HandlerError::Reject(format!("unknown mode {other:?}"))),
        }
    }
}

export!(Hostile);
