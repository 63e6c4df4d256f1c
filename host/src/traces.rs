//! Traces over OTLP, off by default: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `[traces] endpoint`) each event gets spans for its publish, its
//! dispatch, each handler call and the commit, exported by the
//! OpenTelemetry SDK's batch processor (its own thread, OTLP/HTTP protobuf).
//!
//! The W3C `traceparent` travels as an event header (stored in SQLite, in
//! the Kafka record's value and as a Kafka record header), so a trace
//! follows an event to every device that handles it, and into the events
//! its handlers publish (their `traceparent` names the handler call's
//! span). Sampling is parent-based with a trace-id ratio at the root
//! (`OTEL_TRACES_SAMPLER_ARG`), so every device keeps or drops a trace
//! alike; the flag travels with the header.

use crate::event::Event;
use crate::outcome::Run;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use persona_bus_model::settings::{Checked, EnvVar, Invalid};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The event header (and Kafka record header) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// `[traces]`; the standard `OTEL_*` variables override it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended). None: tracing is off. Env: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Fraction of new traces kept, 0..=1 (a trace started elsewhere keeps
    /// its own decision). Env: `OTEL_TRACES_SAMPLER_ARG`.
    pub sample_ratio: f64,
    /// `service.name` of this host's spans. Env: `OTEL_SERVICE_NAME`.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            sample_ratio: 1.0,
            service_name: "persona-bus".into(),
        }
    }
}

impl TracesConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT",
            key: "traces.endpoint",
            help: "OTLP/HTTP collector, e.g. http://127.0.0.1:4318; traces are off without one",
            secret: false,
            set: |s, v, _| {
                s.endpoint = Some(v);
                Ok(())
            },
        },
        EnvVar {
            name: "OTEL_SERVICE_NAME",
            key: "traces.service_name",
            help: "service.name of this host's spans",
            secret: false,
            set: |s, v, _| {
                s.service_name = v;
                Ok(())
            },
        },
        EnvVar {
            name: "OTEL_TRACES_SAMPLER_ARG",
            key: "traces.sample_ratio",
            help: "share of new traces kept, 0 to 1",
            secret: false,
            set: |s, v, _| {
                s.sample_ratio = v
                    .trim()
                    .parse()
                    .map_err(|_| "expected a ratio between 0 and 1 (e.g. 0.01)".to_owned())?;
                Ok(())
            },
        },
    ];

    pub fn validate(&self) -> Checked {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Invalid::new(
                "traces.sample_ratio",
                "must be between 0 and 1",
            ));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(Invalid::new(
                "traces.endpoint",
                format!("{e:?} must start with http:// or https:// (OTLP over HTTP)"),
            ));
        }
        Ok(())
    }
}

/// The host's tracer, or nothing (every call is then a no-op).
pub struct Traces {
    on: Option<On>,
}

struct On {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    shut: std::sync::atomic::AtomicBool,
}

/// A dispatch span in flight: ended after its event's outcome is
/// committed, with a commit span of its own.
pub struct EventSpan {
    span: Span,
    /// The context the event came with (its `traceparent`, or none).
    parent: Context,
    /// Recorded: its handler calls and commit get spans too. Unsampled,
    /// only its decision is handed on, to the events handlers publish.
    sampled: bool,
}

impl Traces {
    pub fn off() -> Self {
        Self { on: None }
    }

    /// Starts the exporter when an endpoint is configured. A bad endpoint
    /// is logged and leaves tracing off: the bus runs without it.
    pub fn new(config: &TracesConfig, device: &str) -> Self {
        let Some(endpoint) = config.endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
            return Self::off();
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(endpoint = %url, error = %e, "cannot export traces; tracing is off");
                return Self::off();
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("host.name", device.to_owned()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("persona-bus");
        tracing::info!(endpoint = %url, ratio = config.sample_ratio, "exporting traces over OTLP");
        Self {
            on: Some(On {
                provider,
                tracer,
                propagator: TraceContextPropagator::new(),
                shut: Default::default(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.on.is_some()
    }

    /// An event entering the bus: a publish span (child of the event's own
    /// `traceparent`, if it came with one), whose context replaces it.
    pub fn published(&self, event: &mut Event) {
        let Some(on) = &self.on else { return };
        let parent = on.extract(&event.headers);
        let mut span = on
            .tracer
            .span_builder("publish")
            .with_kind(SpanKind::Producer)
            .start_with_context(&on.tracer, &parent);
        describe(&mut span, "publish", event);
        let cx = parent.with_remote_span_context(span.span_context().clone());
        on.inject(&cx, &mut event.headers);
        span.end();
    }

    /// An event about to be dispatched: its dispatch span, child of its
    /// `traceparent` (a new trace without one). None when off. An unsampled
    /// span records nothing but still hands its decision to the events its
    /// handlers publish.
    pub fn dispatching(&self, event: &Event) -> Option<EventSpan> {
        let on = self.on.as_ref()?;
        let parent = on.extract(&event.headers);
        let mut span = on
            .tracer
            .span_builder("dispatch")
            .with_kind(SpanKind::Consumer)
            .start_with_context(&on.tracer, &parent);
        describe(&mut span, "dispatch", event);
        let sampled = span.span_context().is_sampled();
        Some(EventSpan {
            span,
            parent,
            sampled,
        })
    }

    /// A handler call that ran from `started` for `run.duration`: its span,
    /// and the `traceparent` of the events it published.
    pub fn handler_ran(&self, parent: &EventSpan, run: &mut Run, started: SystemTime) {
        let Some(on) = &self.on else { return };
        if !parent.sampled {
            // No spans to record: the dispatch's decision goes on.
            if !run.effects.published.is_empty() {
                let cx = parent.cx();
                for event in &mut run.effects.published {
                    on.inject(&cx, &mut event.headers);
                }
            }
            return;
        }
        let mut span = on
            .tracer
            .span_builder("handler")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(&on.tracer, &parent.cx());
        if span.is_recording() {
            span.update_name(format!("handler {}", run.handler));
            span.set_attributes([
                KeyValue::new("handler.name", run.handler.to_string()),
                KeyValue::new("handler.version", run.version.to_string()),
                KeyValue::new("handler.attempt", i64::from(run.attempt)),
                KeyValue::new("handler.outcome", run.outcome.label()),
                KeyValue::new("handler.published", run.effects.published.len() as i64),
            ]);
            if let Some(error) = run.outcome.error() {
                span.set_status(Status::error(error));
            }
        }
        let cx = parent
            .parent
            .with_remote_span_context(span.span_context().clone());
        for event in &mut run.effects.published {
            on.inject(&cx, &mut event.headers);
        }
        span.end_with_timestamp(started + run.duration);
    }

    /// The outcome of `span`'s event was committed between `started` and
    /// now: a commit span, then the dispatch span ends.
    pub fn committed(&self, mut span: EventSpan, started: SystemTime) {
        let Some(on) = &self.on else { return };
        if !span.sampled {
            return;
        }
        on.tracer
            .span_builder("commit")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(&on.tracer, &span.cx())
            .end();
        span.span.end();
    }

    /// Sends what is buffered (at shutdown; once, however often called).
    pub fn shutdown(&self) {
        if let Some(on) = &self.on
            && !on.shut.swap(true, std::sync::atomic::Ordering::AcqRel)
            && let Err(e) = on.provider.shutdown()
        {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

impl EventSpan {
    /// The context its children (handler calls, commit, published events)
    /// hang from.
    fn cx(&self) -> Context {
        self.parent
            .with_remote_span_context(self.span.span_context().clone())
    }

    /// Marks the dispatch as failed (the event's final status says why).
    pub fn set_error(&mut self, message: String) {
        self.span.set_status(Status::error(message));
    }
}

impl On {
    fn extract(&self, headers: &[(String, String)]) -> Context {
        self.propagator
            .extract_with_context(&Context::new(), &HeaderView(headers))
    }

    /// Sets `traceparent` (and `tracestate`) from `cx`, replacing any.
    fn inject(&self, cx: &Context, headers: &mut Vec<(String, String)>) {
        headers.retain(|(k, _)| k != TRACEPARENT && k != "tracestate");
        self.propagator.inject_context(cx, &mut HeaderSink(headers));
    }
}

/// Names and labels a recorded span (an unsampled one costs nothing more).
fn describe(span: &mut Span, what: &str, e: &Event) {
    if !span.is_recording() {
        return;
    }
    span.update_name(format!("{what} {}", e.event_type));
    span.set_attributes([
        KeyValue::new("event.id", e.id.clone()),
        KeyValue::new("event.type", e.event_type.clone()),
        KeyValue::new("event.project", e.project_id.clone()),
        KeyValue::new("event.chain_depth", i64::from(e.chain_depth)),
    ]);
}

struct HeaderView<'a>(&'a [(String, String)]);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderSink<'a>(&'a mut Vec<(String, String)>);

impl Injector for HeaderSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}
