//! A `batch-handler` (persona:bus@0.2.0): the same work per event through
//! `handle` and through `handle-batch`, so tests can check that a batch
//! behaves as its events one after another.
//!
//! Payload: `{"key": "k7", "seq": 12, "do": "..."}`; a key's events carry
//! `seq` = 1, 2, 3, ... Per event it reads `last:<key>` (0 when unset),
//! counts `out_of_order` when `seq != last + 1`, writes `last:<key>` =
//! `seq`, reads it back (`bad_readback` if it differs), appends `seq` to
//! `seen:<key>`, counts `n:<id>` (how many times the event was committed)
//! and `done`. Each `handle-batch` call counts `batch_calls` and adds its
//! size to `batched` (on its first event).
//!
//! `do` (on the first attempt only, so a retry succeeds; `sleep` always):
//! - `reject`: rejects (dead letter);
//! - `write-reject`: writes `junk:<id>`, then rejects;
//! - `retry`: returns retry before writing anything;
//! - `write-retry`: writes `last:<key>` = 999999, then returns retry (the
//!   events after it in its batch read that write, so must run again);
//! - `trap`: panics (the whole call fails);
//! - `sleep:<ms>`: sleeps that long first;
//! - `peek:<key>`: also keeps what it read of `last:<key>` in
//!   `peeked:<id>` (`none` when unset).
//!
//! Config `url`: first a GET to that URL per event (its idempotency key is
//! the event's own, in a batch as alone).
wit_bindgen::generate!({ path: "../../../wit", world: "batch-handler" });

use persona::bus::batch::next;
use persona::bus::host::config;
use persona::bus::state::{get, increment, set};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct Batch;

/// The value after `"name":` in a flat JSON object.
fn field<'a>(payload: &'a str, name: &str) -> Option<&'a str> {
    let at = payload.find(&format!("\"{name}\""))? + name.len() + 2;
    let rest = payload[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn retry(e: impl std::fmt::Debug) -> HandlerError {
    HandlerError::Retry(format!("{e:?}"))
}

/// A GET of `http://authority/path`; the status.
fn fetch(url: &str) -> Result<u16, ErrorCode> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(ErrorCode::HttpRequestUriInvalid)?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let req = OutgoingRequest::new(Fields::new());
    let bad = |_| ErrorCode::HttpRequestUriInvalid;
    req.set_method(&Method::Get).map_err(bad)?;
    req.set_scheme(Some(&Scheme::Http)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(bad)?;
    let pending = outgoing_handler::handle(req, None)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or(ErrorCode::HttpResponseIncomplete)?
        .map_err(|()| ErrorCode::HttpResponseIncomplete)??;
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| ErrorCode::HttpResponseIncomplete)?;
    let stream = body
        .stream()
        .map_err(|()| ErrorCode::HttpResponseIncomplete)?;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(_) => {}
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => {
                return Err(ErrorCode::HttpResponseIncomplete);
            }
        }
    }
    Ok(status)
}

fn one(event: &Event) -> Result<(), HandlerError> {
    if let Some(url) = config("url") {
        let status = fetch(&url).map_err(retry)?;
        if status != 200 {
            return Err(HandlerError::Retry(format!(
                "the service answered {status}"
            )));
        }
    }
    let key = field(&event.payload, "key").unwrap_or("").to_owned();
    let seq: u64 = field(&event.payload, "seq")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| HandlerError::Reject("no seq".into()))?;
    let last_key = format!("last:{key}");
    let first_attempt = event.attempt == 1;
    match field(&event.payload, "do").unwrap_or("") {
        "reject" if first_attempt => return Err(HandlerError::Reject("asked to reject".into())),
        "write-reject" if first_attempt => {
            set(&format!("junk:{}", event.id), b"x").map_err(retry)?;
            return Err(HandlerError::Reject("wrote, then asked to reject".into()));
        }
        "retry" if first_attempt => return Err(HandlerError::Retry("asked to retry".into())),
        "write-retry" if first_attempt => {
            set(&last_key, b"999999").map_err(retry)?;
            return Err(HandlerError::Retry("wrote, then asked to retry".into()));
        }
        "trap" if first_attempt => panic!("asked to trap"),
        other => {
            if let Some(peek) = other.strip_prefix("peek:") {
                let seen = get(&format!("last:{peek}")).unwrap_or_else(|| b"none".to_vec());
                set(&format!("peeked:{}", event.id), &seen).map_err(retry)?;
            }
            if let Some(ms) = other.strip_prefix("sleep:").and_then(|v| v.parse().ok()) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }
    let last: u64 = get(&last_key)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if seq != last + 1 {
        increment("out_of_order", 1).map_err(retry)?;
    }
    set(&last_key, seq.to_string().as_bytes()).map_err(retry)?;
    if get(&last_key).as_deref() != Some(seq.to_string().as_bytes()) {
        increment("bad_readback", 1).map_err(retry)?;
    }
    let seen_key = format!("seen:{key}");
    let mut seen = get(&seen_key).unwrap_or_default();
    if !seen.is_empty() {
        seen.push(b',');
    }
    seen.extend_from_slice(seq.to_string().as_bytes());
    set(&seen_key, &seen).map_err(retry)?;
    increment(&format!("n:{}", event.id), 1).map_err(retry)?;
    increment("done", 1).map_err(retry)?;
    Ok(())
}

impl Guest for Batch {
    fn handle(event: Event) -> Result<(), HandlerError> {
        one(&event)
    }

    fn handle_batch(count: u32) -> Vec<Result<(), HandlerError>> {
        let mut results = Vec::with_capacity(count as usize);
        while let Some(event) = next() {
            if results.is_empty() {
                // The first event's effects: committed with it.
                let _ = increment("batch_calls", 1);
                let _ = increment("batched", i64::from(count));
            }
            results.push(one(&event));
        }
        results
    }
}

export!(Batch);
