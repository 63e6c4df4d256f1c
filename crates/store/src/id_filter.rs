//! A Bloom filter over every event id this store has: it answers "not here"
//! for a new id without a probe of the on-disk id index.
//!
//! Events consumed from Kafka are nearly all new to this device, and each
//! used to cost two probes of `persona_event_ids` (random UUIDs, a leaf page
//! each): one to skip handlers that already ran (on a reader, whose page
//! cache SQLite throws away whenever the WAL moved), one at commit. Together
//! about an eighth of the host's CPU in a Kafka backlog run.
//!
//! The filter only ever grows: an id is added when it enters the id tail
//! (read back from the table or written here), and the index is filled only
//! from the tail, so every id in the index is in the filter. Deleted events
//! stay in it; they cost a probe, never a wrong answer. It is made of parts
//! of doubling size (a scalable Bloom filter), so it never has to be rebuilt
//! from the table as the store grows; past `[store] id_filter_kb` it is
//! dropped and every miss probes the index again, as before.

use std::hash::BuildHasher;

/// Bits per id a part is sized for: about 1% false positives with
/// [`HASHES`] (each false positive costs one index probe).
const BITS_PER_ID: usize = 10;
const HASHES: u64 = 7;
/// The first part: 64 Ki bits (8 KiB), room for about 6,500 ids.
const FIRST_BITS: usize = 1 << 16;
/// Parts index their bits with 32-bit hashes.
const MAX_PART_BITS: usize = 1 << 32;

pub(crate) struct IdFilter {
    parts: Vec<Part>,
    hasher: foldhash::quality::RandomState,
    max_bytes: usize,
}

struct Part {
    bits: Vec<u64>,
    /// How many bits (a multiple of 64).
    len: u64,
    ids: usize,
    capacity: usize,
}

impl Part {
    fn new(bits: usize) -> Self {
        let bits = bits.clamp(64, MAX_PART_BITS).div_ceil(64) * 64;
        Self {
            bits: vec![0; bits / 64],
            len: bits as u64,
            ids: 0,
            capacity: bits / BITS_PER_ID,
        }
    }

    fn insert(&mut self, hash: u64) {
        for bit in positions(self.len, hash) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.ids += 1;
    }

    fn contains(&self, hash: u64) -> bool {
        positions(self.len, hash).all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// Double hashing: bit i is `h1 + i * h2`, from the two halves of one hash.
///
/// The 32-bit positions are scaled onto `len` bits by a multiply and shift,
/// so that a part can have any size, not only a power of two (rounding up to
/// one would have cost up to twice the memory).
fn positions(len: u64, hash: u64) -> impl Iterator<Item = u64> {
    let h1 = hash as u32;
    let h2 = (hash >> 32) as u32 | 1;
    (0..HASHES as u32).map(move |i| (u64::from(h1.wrapping_add(i.wrapping_mul(h2))) * len) >> 32)
}

impl IdFilter {
    /// An empty filter sized for about `expected` ids, or none when that
    /// alone would pass `max_bytes`.
    pub(crate) fn new(expected: usize, max_bytes: usize) -> Option<Self> {
        let first = Part::new((expected.saturating_mul(BITS_PER_ID)).max(FIRST_BITS));
        (first.bytes() <= max_bytes).then(|| Self {
            parts: vec![first],
            hasher: foldhash::quality::RandomState::default(),
            max_bytes,
        })
    }

    /// Adds an id. False when the filter would pass its memory bound: the
    /// caller drops it (an incomplete filter would give wrong answers).
    #[must_use]
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        let last = self.parts.last().expect("a filter has a part");
        if last.ids >= last.capacity {
            let next = Part::new(last.bits.len() * 64 * 2);
            if next.len <= last.len {
                // At the largest part there is.
                return false;
            }
            if self.bytes() + next.bytes() > self.max_bytes {
                return false;
            }
            self.parts.push(next);
        }
        self.parts
            .last_mut()
            .expect("a filter has a part")
            .insert(hash);
        true
    }

    /// False only for an id never inserted.
    pub(crate) fn may_contain(&self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        self.parts.iter().any(|p| p.contains(hash))
    }

    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(Part::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_misses_an_inserted_id_and_rarely_claims_a_new_one() {
        let mut f = IdFilter::new(1_000, 64 << 20).unwrap();
        let ids: Vec<String> = (0..200_000).map(|i| format!("{i:08x}-id")).collect();
        for id in &ids {
            assert!(f.insert(id));
        }
        assert!(f.parts.len() > 1, "grew past its first part");
        assert!(ids.iter().all(|id| f.may_contain(id)), "a false negative");
        let false_positives = (0..100_000)
            .filter(|i| f.may_contain(&format!("{i:08x}-new")))
            .count();
        // Each part is at most ~1% at capacity; the parts add up.
        assert!(false_positives < 5_000, "{false_positives} of 100,000");
    }

    #[test]
    fn refuses_to_grow_past_its_bound() {
        assert!(IdFilter::new(1_000_000, 1024).is_none());
        let mut f = IdFilter::new(0, 16 << 10).unwrap();
        let refused = (0..100_000).any(|i| !f.insert(&format!("id-{i}")));
        assert!(refused);
        assert!(f.bytes() <= 16 << 10);
    }
}
