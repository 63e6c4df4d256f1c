//! Checks that the events of one ordering key reach it in order, and that
//! each call sees the state the previous call of its key left.
//!
//! Payload: `{"key": "k7", "seq": 12}`; a key's events carry `seq` = 1, 2,
//! 3, ... Per key it reads `last:<key>` (0 when unset), counts
//! `out_of_order` when `seq != last + 1`, writes `last:<key>` = `seq`, then
//! reads it back and counts `bad_readback` if it differs. It also keeps
//! `seen:<key>`, the `seq`s in the order its calls completed, and counts
//! `done`.
//!
//! Config `url`: first a GET to that URL (with `?key=..&seq=..`), the
//! outside service a real handler waits on. Payload `"sleep_ms": N`: then
//! sleep that long (a call that outlives its deadline when N is large).
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::config;
use persona::bus::state::{get, increment, set};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct Keyed;

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

impl Guest for Keyed {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let key = field(&event.payload, "key").unwrap_or("").to_owned();
        let seq: u64 = field(&event.payload, "seq")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HandlerError::Reject("no seq".into()))?;
        if let Some(url) = config("url") {
            let status = fetch(&format!("{url}?key={key}&seq={seq}")).map_err(retry)?;
            if status != 200 {
                return Err(HandlerError::Retry(format!(
                    "the service answered {status}"
                )));
            }
        }
        if let Some(ms) = field(&event.payload, "sleep_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let last_key = format!("last:{key}");
        let last: u64 = get(&last_key)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if seq != last + 1 {
            increment("out_of_order", 1).map_err(retry)?;
        }
        set(&last_key, seq.to_string().as_bytes()).map_err(retry)?;
        let back = get(&last_key);
        if back.as_deref() != Some(seq.to_string().as_bytes()) {
            increment("bad_readback", 1).map_err(retry)?;
        }
        let seen_key = format!("seen:{key}");
        let mut seen = get(&seen_key).unwrap_or_default();
        if !seen.is_empty() {
            seen.push(b',');
        }
        seen.extend_from_slice(seq.to_string().as_bytes());
        set(&seen_key, &seen).map_err(retry)?;
        increment("done", 1).map_err(retry)?;
        Ok(())
    }
}

export!(Keyed);
