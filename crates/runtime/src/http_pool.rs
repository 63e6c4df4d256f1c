//! Kept-alive connections for handlers' plain-HTTP outbound requests.
//!
//! wasi-http's default sender opens a TCP connection and an HTTP/1
//! handshake per request, and drops both after the response: for a handler
//! that calls one service per event, that is most of the CPU its request
//! costs, on both ends. Here an idle connection is kept per (handler,
//! authority) and reused by the next request that finds it ready.
//!
//! - Per handler: a connection one handler's guest drove is never handed
//!   to another's, whatever the destination.
//! - A connection is reused only when hyper says it can take a request
//!   (the previous response was read to its end, the server kept it open);
//!   one that is busy or closed is passed over or dropped.
//! - At most [`MAX_IDLE`] idle connections per key; more are closed.
//! - `https` goes through wasi-http's own sender (TLS per request).

use http_body_util::BodyExt;
use persona_bus_model::fast_map::FastMap;
use persona_bus_model::sync::Locked;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// Idle connections kept per (handler, authority).
const MAX_IDLE: usize = 64;

type Sender = hyper::client::conn::http1::SendRequest<WasiBody>;

/// (handler, `host:port`).
type Key = (Arc<str>, String);

#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<FastMap<Key, Vec<Sender>>>,
}

impl HttpPool {
    /// Sends `request` (an `http://` one) for `handler`, on an idle
    /// connection if one is ready, else on a new one, under `options`'
    /// timeouts (all set by the caller).
    pub async fn send(
        self: Arc<Self>,
        handler: Arc<str>,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let uri = request.uri();
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let authority = match authority.port() {
            Some(_) => authority.to_string(),
            None => format!("{authority}:80"),
        };
        // Origin form on the wire (the Host header is set already).
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let key = (handler, authority);
        let mut sender = match self.take_ready(&key) {
            Some(sender) => sender,
            None => connect(&key.1, options.connect_timeout).await?,
        };
        let first_byte = options
            .first_byte_timeout
            .unwrap_or(Duration::from_secs(600));
        let response = tokio::time::timeout(first_byte, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)?;
        // Back in the pool at once: it is ready again once this response
        // has been read to its end, and `take_ready` checks that.
        self.put(key, sender);
        let between = options
            .between_bytes_timeout
            .unwrap_or(Duration::from_secs(600))
            .max(Duration::from_nanos(1));
        Ok(response.map(|incoming| {
            let mut timeout = tokio::time::interval(between);
            timeout.reset();
            BetweenBytes { incoming, timeout }.boxed_unsync()
        }))
    }

    /// An idle connection of `key` that can take a request now; the
    /// closed ones found on the way are dropped.
    fn take_ready(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.locked();
        let senders = idle.get_mut(key)?;
        senders.retain(|s| !s.is_closed());
        let at = senders.iter().rposition(|s| s.is_ready())?;
        Some(senders.swap_remove(at))
    }

    fn put(&self, key: Key, sender: Sender) {
        let mut idle = self.idle.locked();
        let senders = idle.entry(key).or_default();
        if senders.len() < MAX_IDLE {
            senders.push(sender);
        }
    }
}

/// A new HTTP/1 connection to `authority`, its I/O driven by a task of its
/// own (it ends when the connection closes).
async fn connect(authority: &str, timeout: Option<Duration>) -> Result<Sender, HttpError> {
    let timeout = timeout.unwrap_or(Duration::from_secs(600));
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(|_| HttpError::ConnectionRefused)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::from)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("outbound HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}

/// A response body that fails when no byte came for its between-bytes
/// timeout (as wasi-http's own sender does).
struct BetweenBytes {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for BetweenBytes {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
