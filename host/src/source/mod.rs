//! Where events come from: the SQLite poller, or the Kafka consumer
//! (`kafka::consumer`) with the poller as its fallback. Both go through the
//! same dispatch and commit path; [`SourceSwitch`] decides who is in charge.

pub mod config;
mod handoff;
pub mod poller;
pub mod switch;
mod wakeup;

pub(crate) use handoff::commit_published;
pub use switch::{SourceStatus, SourceSwitch};
pub use wakeup::{Wakeup, Woke};
