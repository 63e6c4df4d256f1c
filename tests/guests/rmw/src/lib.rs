//! Read-modify-write per ordering unit (the event's project), to check that
//! a call sees exactly the writes of the completed calls before it.
//!
//! Payload: `{"n": N, "fail": "retry" | "reject" | "timeout"}` (`fail`
//! optional). Per project `p` it keeps, with `get`/`set`/`delete` only:
//! - `count:p`: completed events, read then written (a stale read loses one);
//! - `last:p`: the `n` of the latest completed event;
//! - `tmp:p`: set by even `n`, read and deleted by odd `n`;
//! - `chain:p`: a hash over the `n`s in the order the calls completed, so a
//!   test can compare the final state with the serial application of the
//!   completed events (their execution rows, in commit order).
//!
//! With config `strict = "true"` events arrive as `n = 1, 2, 3, ...` per
//! project and every call checks `last == n - 1` (and the `tmp` it expects);
//! a mismatch increments `stale`. A failing event first writes `poison`
//! everywhere, then fails (attempt 1 only, except `reject`); any later call
//! that reads `poison` increments `poison_seen`. `total` counts completed
//! calls with `increment` across projects. Config `sleep_ms` makes each
//! call that slow; `pad_bytes` writes that many bytes to `pad:p` per call;
//! `skew_every = K` writes `last:p` as `n + 1000` when K divides `n` (a
//! version that differs from the others on a known subset of events).
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::config;
use persona::bus::state::{delete, get, increment, set};

struct Rmw;

const POISON: &[u8] = b"poison";

/// The number after `"name":` in a flat JSON object (no nesting needed).
fn field<'a>(payload: &'a str, name: &str) -> Option<&'a str> {
    let at = payload.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = payload[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn fnv(prev: &[u8], n: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prev
        .iter()
        .copied()
        .chain(b":".iter().copied())
        .chain(n.to_string().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn err(e: impl std::fmt::Debug) -> HandlerError {
    HandlerError::Retry(format!("{e:?}"))
}

impl Guest for Rmw {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let p = &event.project_id;
        let n: u64 = field(&event.payload, "n")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HandlerError::Reject("payload has no n".into()))?;
        let fail = field(&event.payload, "fail");
        let strict = config("strict").as_deref() == Some("true");
        if let Some(ms) = config("sleep_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let (count_k, last_k, tmp_k, chain_k) = (
            format!("count:{p}"),
            format!("last:{p}"),
            format!("tmp:{p}"),
            format!("chain:{p}"),
        );

        let read = |k: &str| -> Option<Vec<u8>> {
            let v = get(k);
            if v.as_deref() == Some(POISON) {
                let _ = increment("poison_seen", 1);
            }
            v
        };
        let num = |v: Option<Vec<u8>>| -> u64 {
            v.and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };

        let count = num(read(&count_k));
        let last = num(read(&last_k));
        let chain = read(&chain_k).unwrap_or_default();
        if strict && last + 1 != n {
            increment("stale", 1).map_err(err)?;
        }

        if let Some(mode) = fail
            && (event.attempt == 1 || mode == "reject")
        {
            for k in [&count_k, &last_k, &tmp_k, &chain_k] {
                set(k, POISON).map_err(err)?;
            }
            match mode {
                "reject" => return Err(HandlerError::Reject(format!("n = {n} rejects"))),
                "timeout" => loop {
                    std::hint::black_box(n);
                },
                _ => return Err(HandlerError::Retry(format!("n = {n} retries"))),
            }
        }

        set(&count_k, (count + 1).to_string().as_bytes()).map_err(err)?;
        let skew = config("skew_every")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|k| n.is_multiple_of(k));
        let last_written = if skew { n + 1000 } else { n };
        set(&last_k, last_written.to_string().as_bytes()).map_err(err)?;
        set(&chain_k, fnv(&chain, n).as_bytes()).map_err(err)?;
        if n.is_multiple_of(2) {
            set(&tmp_k, n.to_string().as_bytes()).map_err(err)?;
        } else {
            let tmp = read(&tmp_k);
            if strict && n > 1 && num(tmp) + 1 != n {
                increment("stale", 1).map_err(err)?;
            }
            delete(&tmp_k);
        }
        // Read again after writing: a call sees its own writes.
        if num(read(&count_k)) != count + 1 {
            increment("stale", 1).map_err(err)?;
        }
        if let Some(pad) = config("pad_bytes").and_then(|v| v.parse().ok()) {
            // Bulk for every commit (the full-disk test).
            set(&format!("pad:{p}"), &vec![b'x'; pad]).map_err(err)?;
        }
        increment("total", 1).map_err(err)?;
        Ok(())
    }
}

export!(Rmw);
