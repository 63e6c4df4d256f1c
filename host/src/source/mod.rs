//! Where events come from: the SQLite poller, or the Kafka consumer
//! (`source::kafka`) with the poller as its fallback. Both go through the
//! same dispatch and commit path; [`SourceSwitch`] decides who is in charge.

pub mod config;
mod handoff;
pub mod kafka;
pub mod poller;

pub(crate) use handoff::commit_published;
