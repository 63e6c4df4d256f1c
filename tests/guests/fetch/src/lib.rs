//! Makes the outbound HTTP requests its manifest's `config.urls` names
//! (space-separated), through `wasi:http/outgoing-handler`, following up to
//! three redirects as a client would. Writes what each got to its state,
//! `result:<i>` = `status=<code> bytes=<n>` or `error=<code>`. With
//! `config.fail_first = "true"` it asks for a retry on its first attempt
//! (after its requests), so a test sees the same requests made twice.
//! With `config.leak = "<name>"` it logs the secret `<name>` and rejects
//! the event with it in the message (the host must scrub both).
wit_bindgen::generate!({ path: "../../../wit", world: "handler" });

use persona::bus::host::{config, log};
use persona::bus::state::set;
use persona::bus::types::Level;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

struct Fetch;

/// (status, body bytes, location header).
fn get(url: &str) -> Result<(u16, usize, Option<String>), ErrorCode> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(ErrorCode::HttpRequestUriInvalid)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let bad = |_| ErrorCode::HttpRequestUriInvalid;
    req.set_method(&Method::Get).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let pending = outgoing_handler::handle(req, None)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or(ErrorCode::HttpResponseIncomplete)?
        .map_err(|()| ErrorCode::HttpResponseIncomplete)??;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let body = response
        .consume()
        .map_err(|()| ErrorCode::HttpResponseIncomplete)?;
    let stream = body
        .stream()
        .map_err(|()| ErrorCode::HttpResponseIncomplete)?;
    let mut bytes = 0;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes += chunk.len(),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(wasip2::http::types::http_error_code(&e)
                    .unwrap_or(ErrorCode::HttpResponseIncomplete));
            }
        }
    }
    Ok((status, bytes, location))
}

impl Guest for Fetch {
    fn handle(event: Event) -> Result<(), HandlerError> {
        // `config.leak = "<secret name>"`: try every way to show a secret.
        if let Some(name) = config("leak") {
            let value = config(&name).unwrap_or_default();
            log(Level::Warn, &format!("the secret is {value}"));
            set("seen", value.as_bytes()).map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
            return Err(HandlerError::Reject(format!("leaked: {value}")));
        }
        let urls = config("urls").unwrap_or_default();
        for (i, first) in urls.split_whitespace().enumerate() {
            let mut url = first.to_owned();
            let mut result = String::new();
            for _hop in 0..4 {
                match get(&url) {
                    Ok((status, _, Some(next))) if (300..400).contains(&status) => {
                        url = if next.starts_with('/') {
                            let origin: String =
                                url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                            format!("{origin}{next}")
                        } else {
                            next
                        };
                        result = format!("redirect={url}");
                    }
                    Ok((status, bytes, _)) => {
                        result = format!("status={status} bytes={bytes}");
                        break;
                    }
                    Err(e) => {
                        result = format!("error={e:?}");
                        break;
                    }
                }
            }
            set(&format!("result:{i}"), result.as_bytes())
                .map_err(|e| HandlerError::Retry(format!("{e:?}")))?;
        }
        if config("fail_first").as_deref() == Some("true") && event.attempt == 1 {
            return Err(HandlerError::Retry("first attempt: once more".into()));
        }
        Ok(())
    }
}

export!(Fetch);
