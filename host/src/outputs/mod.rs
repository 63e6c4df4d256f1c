//! Where events go besides the handlers, each on its own thread: the outbox
//! relay produces stored events to Kafka (`outbox`); the audit logger reads
//! the execution records of every host into the ledger (`archive`); the
//! webhook ingester turns records of the webhooks topic into events
//! (`webhooks`).

pub mod archive;
pub mod outbox;
pub mod webhooks;
