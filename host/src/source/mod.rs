//! Where events come from. In the embedded default that is the SQLite
//! poller; the Kafka consumer and the failover between the two build on the
//! same dispatch and commit path.

pub mod poller;
mod wakeup;

pub use wakeup::Wakeup;
