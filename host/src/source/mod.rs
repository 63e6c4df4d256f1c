//! Where events come from. Every source implements [`Source`]: the bus
//! starts the ones the configuration asks for ([`configured`]) with the same
//! [`SourceContext`], under its one [`Supervisor`], and they all stop when
//! its token fires.
//!
//! - `poller`: the SQLite poller, always running (Kafka's fallback, and the
//!   only source without Kafka); `handoff`, publishes handed to it in memory.
//! - `kafka`: the event processor group, when Kafka is the source.
//! - `archive`: the audit logger group, other hosts' execution records into
//!   the ledger.
//! - `webhooks`: the webhook ingester group, records of the webhooks topic
//!   into events.
//!
//! All of them deliver through the same pipeline and commit path;
//! [`crate::switch::SourceSwitch`] decides whether SQLite or Kafka is in
//! charge.

pub mod archive;
pub mod config;
mod handoff;
pub mod kafka;
pub mod poller;
pub mod webhooks;

pub(crate) use handoff::commit_published;

use crate::context::HostContext;
use crate::pipeline::{Pipeline, Sink};
use crate::supervisor::{StartError, Supervisor};
use std::sync::Arc;

/// What every source is started with.
#[derive(Clone)]
pub struct SourceContext {
    pub ctx: Arc<HostContext>,
    pub pipeline: Arc<Pipeline>,
    /// Where the outcomes of events claimed from SQLite go.
    pub sqlite: Arc<dyn Sink>,
}

/// A source of events (or of other hosts' outcomes). `start` makes what the
/// source needs (a Kafka client may be refused here, and the host does not
/// start) and spawns its threads under `tasks`; they end soon after the
/// token fires.
pub trait Source: Send {
    fn start(self: Box<Self>, cx: &SourceContext, tasks: &Supervisor) -> Result<(), StartError>;
}

/// The sources the configuration asks for, in the order they start: the
/// Kafka groups when Kafka is the source, then the SQLite poller.
pub fn configured(ctx: &HostContext) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if ctx.source.consuming() {
        sources.push(Box::new(kafka::EventProcessor));
        sources.push(Box::new(archive::AuditLogger));
        sources.push(Box::new(webhooks::WebhookIngester));
    }
    sources.push(Box::new(poller::Poller));
    sources
}
