//! Hash maps for the per-event hot path: the id tail, the pipeline's
//! tickets, the offset tracker, handler numbers.
//!
//! std's `HashMap` hashes with SipHash-1-3, which was about 5% of the host's
//! CPU in a Kafka backlog run (every event's id is hashed several times on
//! its way through). foldhash is several times faster on short keys and is
//! still seeded at random per map, so keys chosen by a producer cannot be
//! aimed at one bucket ahead of time; it is what `hashbrown` (the table
//! under std's map) uses by default.

/// A `HashMap` with foldhash's per-map random seed.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash's per-set random seed.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
