//! Outbound HTTP for handlers (`wasi:http/outgoing-handler`), deny by
//! default: a request leaves only for a destination the manifest lists in
//! `allowed_outbound_hosts`; anything else fails in the guest with
//! `HTTP-request-denied` and its reason is written to the execution row.
//! A guest client that follows a redirect makes a new request, which is
//! checked against the same list.
//!
//! Per call: at most `limits.http_requests` requests, `http_response_bytes`
//! per response body, and `http_timeout_ms` per request, never past the
//! call's own deadline. Every request carries `idempotency-key`, derived
//! from (event id, handler, request index): the same event handled again
//! (a retry, a redelivery after a crash) sends the same keys in the same
//! order, so a receiver can drop the repeat.

use http_body_util::BodyExt;
use persona_bus_model::manifest::OutboundRule;
use persona_bus_model::sync::Locked;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// The request header every outbound request carries.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Per-call outbound state: the hooks wasi-http asks before sending.
pub struct Outbound {
    allowed: Arc<[OutboundRule]>,
    handler: Arc<str>,
    event_id: String,
    max_requests: u32,
    max_response_bytes: usize,
    timeout: Duration,
    deadline: Instant,
    sent: u32,
    /// What was refused or cut, for the execution row.
    pub notes: Vec<String>,
    /// `handlers test`: every request and what became of it.
    transcript: Option<super::Transcript>,
    /// Kept-alive connections for `http://` requests.
    pool: Arc<super::http_pool::HttpPool>,
    /// `METHOD URI` of every request, sent or refused, when the call
    /// records its I/O (`HandlerRef::record_io`).
    pub(crate) requests: Option<Vec<String>>,
}

impl Outbound {
    /// The rules and limits of `h`'s manifest, for one call (fresh or on a
    /// reused instance) ending at `deadline`.
    pub(crate) fn for_call(
        h: &super::HandlerRef<'_>,
        call: &super::host_api::Call,
        deadline: Instant,
        pool: &Arc<super::http_pool::HttpPool>,
    ) -> Self {
        let limits = &h.manifest.limits;
        Self {
            allowed: h.manifest.allowed_outbound_hosts.clone(),
            handler: h.name.clone(),
            event_id: call.event_id.clone(),
            max_requests: limits.http_requests,
            max_response_bytes: limits.http_response_bytes,
            timeout: limits.http_timeout,
            deadline,
            sent: 0,
            notes: Vec::new(),
            transcript: call.env.transcript.clone(),
            pool: pool.clone(),
            requests: h.record_io.then(Vec::new),
        }
    }

    fn record(&self, line: String) {
        if let Some(t) = &self.transcript {
            t.locked().push(line);
        }
    }

    /// The next event of a batch call: its requests carry keys derived
    /// from its own id, counted from 0, and count against its own
    /// `limits.http_requests`, so the keys are those it sends when it runs
    /// alone (a retry, or after the batch call failed).
    pub(crate) fn next_event(&mut self, event_id: &str) {
        self.event_id.clear();
        self.event_id.push_str(event_id);
        self.sent = 0;
    }

    /// The notes of this call, joined (none when there were none).
    pub fn take_note(&mut self) -> Option<String> {
        (!self.notes.is_empty()).then(|| std::mem::take(&mut self.notes).join("; "))
    }

    fn deny(&mut self, why: String) -> Box<dyn Future<Output = Result<Sent, HttpError>> + Send> {
        tracing::warn!(handler = %self.handler, event_id = %self.event_id, "outbound HTTP refused: {why}");
        self.record(format!("http refused: {why}"));
        self.notes.push(why);
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// The key of the `index`-th request (0-based) of `handler` on `event_id`.
pub fn idempotency_key(event_id: &str, handler: &str, index: u32) -> String {
    let mut h = Sha256::new();
    h.update(event_id.as_bytes());
    h.update([0]);
    h.update(handler.as_bytes());
    h.update([0]);
    h.update(index.to_be_bytes());
    persona_bus_model::text::hex(&h.finalize()[..16])
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, HttpError>> + Send> {
        drop(fut);
        let uri = request.uri().clone();
        if let Some(r) = &mut self.requests {
            r.push(format!("{} {uri}", request.method()));
        }
        if !self.allowed.iter().any(|rule| rule.allows(&uri)) {
            return self.deny(format!(
                "destination not allowed: {uri} (not in the manifest's allowed_outbound_hosts)"
            ));
        }
        if self.sent >= self.max_requests {
            return self.deny(format!(
                "request limit reached: {} per call (limits.http_requests); {uri} not sent",
                self.max_requests
            ));
        }
        let key = idempotency_key(&self.event_id, &self.handler, self.sent);
        self.sent += 1;
        self.record(format!(
            "http {} {uri} (idempotency-key {key})",
            request.method()
        ));
        if let Ok(v) = http::HeaderValue::from_str(&key) {
            request.headers_mut().insert(IDEMPOTENCY_KEY, v);
        }
        // The guest's own timeouts, never longer than ours or the call's.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let cap = self.timeout.min(left);
        let bound = |t: Option<Duration>| Some(t.map_or(cap, |t| t.min(cap)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: bound(options.connect_timeout),
            first_byte_timeout: bound(options.first_byte_timeout),
            between_bytes_timeout: bound(options.between_bytes_timeout),
        };
        let limit = self.max_response_bytes;
        let pooled = (request.uri().scheme() == Some(&http::uri::Scheme::HTTP))
            .then(|| (self.pool.clone(), self.handler.clone()));
        Box::new(async move {
            let (response, io): (_, Box<dyn Future<Output = _> + Send>) = match pooled {
                // The connection's I/O runs in a task of its own.
                Some((pool, handler)) => (
                    pool.send(handler, request, options).await?,
                    Box::new(async { Ok(()) }),
                ),
                None => {
                    let (response, io) =
                        wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    (response.map(|b| b.boxed_unsync()), Box::new(io))
                }
            };
            if response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > limit as u64)
            {
                return Err(HttpError::HttpResponseBodySize(Some(limit as u64)));
            }
            // Bodies without a length are cut where they pass the limit.
            let response = response.map(|body| {
                http_body_util::Limited::new(body, limit)
                    .map_err(move |e| match e.downcast::<HttpError>() {
                        Ok(inner) => *inner,
                        Err(_) => HttpError::HttpResponseBodySize(Some(limit as u64)),
                    })
                    .boxed_unsync()
            });
            Ok((response, io))
        })
    }
}
