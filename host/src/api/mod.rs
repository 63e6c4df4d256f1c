//! The HTTP API, served by `persona-bus run` (axum): the original bus's
//! routes and JSON shapes (`/api/personas/...`), webhooks, health,
//! readiness, Prometheus metrics and the dashboard at `/`.
//!
//! Every store call is blocking SQLite, so handlers run it on tokio's
//! blocking pool; event processing has threads of its own, so a flood of
//! requests slows the API, not the handlers. Bodies above
//! `http.max_body_bytes` get 413; mutating routes need the bearer token
//! when one is configured (webhooks are checked by signature instead).

pub mod config;
mod events;
mod history;
mod ops;
mod rollouts;
mod subscriptions;
mod webhooks;

use crate::Bus;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::sync::Arc;

/// What every route handler gets.
#[derive(Clone)]
pub struct Api {
    pub bus: Arc<Bus>,
    /// The dashboard's recent past, sampled in the background.
    history: Arc<history::History>,
    /// Publishes from requests, gathered into shared transactions.
    ingest: Ingest,
    /// Produces webhooks to the webhooks topic when Kafka is the source.
    webhook_producer: Option<Arc<rdkafka::producer::FutureProducer>>,
}

/// An error answered as `{"error": message}` with its status code.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, m.into())
    }
    pub fn internal(m: impl std::fmt::Display) -> Self {
        tracing::error!(error = %m, "API request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, m.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.1 }));
        if self.0 == StatusCode::INSUFFICIENT_STORAGE {
            // Nothing was stored: the client should send it again later.
            return (self.0, [(header::RETRY_AFTER, "5")], body).into_response();
        }
        (self.0, body).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as E;
        match e {
            E::EventNotFound(_) | E::SubscriptionNotFound(_) => Self::not_found(e.to_string()),
            E::InvalidSubscription(_) => Self::bad_request(e.to_string()),
            E::DuplicateEvent(_) => Self(StatusCode::CONFLICT, e.to_string()),
            e if e.is_out_of_space() => Self(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
            e => Self::internal(e),
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<crate::Event, crate::BusError>>;

/// One thread that stores published events for every request: it takes
/// whatever requests are waiting and stores them in one transaction, so
/// a busy API costs one commit per batch rather than a blocking task and
/// a lock hand-off per request.
#[derive(Clone)]
pub struct Ingest(std::sync::mpsc::SyncSender<(crate::NewEvent, Reply)>);

impl Ingest {
    fn start(bus: Arc<Bus>) -> Self {
        // Bounded: a flood waits here instead of growing memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(crate::NewEvent, Reply)>(4096);
        let spawned = std::thread::Builder::new()
            .name("http-ingest".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 1024
                        && let Ok(next) = rx.try_recv()
                    {
                        batch.push(next);
                    }
                    let (events, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    for (result, reply) in bus.publish_each(events).into_iter().zip(replies) {
                        let _ = reply.send(result);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the HTTP ingest thread");
        }
        Self(tx)
    }

    /// Publishes one event and waits for it to be stored.
    pub async fn publish(&self, event: crate::NewEvent) -> Result<crate::Event, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let tx = self.0.clone();
        // A full queue blocks: do that off the async threads.
        match tx.try_send((event, reply)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(item)) => {
                tokio::task::spawn_blocking(move || tx.send(item).is_ok())
                    .await
                    .map_err(ApiError::internal)?
                    .then_some(())
                    .ok_or_else(|| ApiError::internal("the ingest thread stopped"))?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(ApiError::internal("the ingest thread stopped"));
            }
        }
        answer
            .await
            .map_err(|_| ApiError::internal("the ingest thread stopped"))?
            .map_err(|e| match e {
                crate::BusError::Event(crate::event::EventError::Schema(e)) if e.is_transient() => {
                    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                crate::BusError::Event(e) => ApiError::bad_request(e.to_string()),
                crate::BusError::Store(e) => ApiError::from(e),
                e => ApiError::internal(e),
            })
    }
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// The routes.
pub fn router(bus: Arc<Bus>) -> Router {
    let http = bus.config().http.clone();
    let webhook_producer = webhook_producer(&bus);
    let history = Arc::new(history::History::new(
        std::time::Duration::from_millis(http.history_sample_ms),
        std::time::Duration::from_secs(http.history_minutes * 60),
    ));
    // Called from `serve`, on the runtime that serves the routes: the
    // sampler ends with it.
    tokio::spawn(history::sample(bus.clone(), history.clone()));
    let api = Api {
        ingest: Ingest::start(bus.clone()),
        bus,
        history,
        webhook_producer,
    };
    Router::new()
        .route("/", get(ops::dashboard))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route(
            "/api/personas/events",
            get(events::list).post(events::publish),
        )
        .route("/api/personas/events/stream", get(events::stream))
        .route("/api/personas/events/{id}", get(events::show))
        .route(
            "/api/personas/events/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/api/personas/events/subscriptions/{id}",
            put(subscriptions::update).delete(subscriptions::delete),
        )
        .route("/api/personas/handlers", get(ops::handlers))
        .route("/api/personas/handlers/{name}", get(rollouts::handler))
        .route("/api/personas/replays", get(rollouts::replays))
        .route("/api/personas/history", get(ops::history))
        .route("/api/personas/dead-letters", get(ops::dead_letters))
        .route("/api/personas/alerts", get(ops::alerts))
        .route(
            "/api/personas/dead-letters/redrive",
            post(ops::redrive_dead_letters),
        )
        .route(
            "/api/personas/dead-letters/purge",
            post(ops::purge_dead_letters),
        )
        .route(
            "/api/personas/dead-letters/{id}",
            axum::routing::delete(ops::purge_dead_letter),
        )
        .route(
            "/api/personas/dead-letters/{id}/retry",
            post(ops::retry_dead_letter),
        )
        .route(
            "/api/personas/webhooks/{trigger_id}",
            post(webhooks::receive),
        )
        .layer(middleware::from_fn_with_state(
            http.token.clone(),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
        .with_state(api)
}

/// Mutating routes need `Authorization: Bearer <token>` when a token is
/// configured. Webhooks prove themselves by signature instead.
async fn require_token(
    State(token): State<Option<String>>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let webhook = request.uri().path().starts_with("/api/personas/webhooks/");
    if let Some(token) = token.filter(|_| mutating && !webhook) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "this route needs `Authorization: Bearer <token>` (PERSONA_BUS_HTTP_TOKEN)".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares without returning early, so timing says nothing about where
/// two secrets differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn webhook_producer(bus: &Bus) -> Option<Arc<rdkafka::producer::FutureProducer>> {
    let k = &bus.config().kafka;
    if !k.consuming() {
        return None;
    }
    crate::kafka::client_config(k)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "5000")
        .create()
        .map_err(|e| tracing::warn!(error = %e, "no webhook producer; webhooks are stored locally"))
        .ok()
        .map(Arc::new)
}

/// Binds the API's address.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    bus: Arc<Bus>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP API and dashboard listening");
    axum::serve(listener, router(bus))
        .with_graceful_shutdown(shutdown)
        .await
}
