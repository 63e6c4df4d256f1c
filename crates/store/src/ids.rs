//! The event id index, written in sorted runs.
//!
//! Producers mostly send random ids (UUIDv4). A unique index on such a key
//! takes each new id to a random leaf page, so a commit of a few thousand
//! events rewrote a few thousand index pages (in the WAL, then again at the
//! checkpoint): that one index cost about a third of the Kafka pipeline's
//! throughput. So the id index is kept in two parts:
//!
//! - `persona_event_ids (id, seq)`: every event with `seq <=
//!   persona_id_merge.merged_through`;
//! - the tail: events after that, whose ids are held here in memory and
//!   rebuilt at start from `persona_events` (their rows are the record, and
//!   rows are only appended, so the tail is a range of `seq`).
//!
//! When the tail reaches `[store] id_tail` ids ([`ID_TAIL`]) they are sorted
//! (in the host, on its checkpointer thread, holding neither the writer nor
//! the tail: `prepare_merge`) and merged into the index in chunks of
//! consecutive ids, one transaction per chunk after the commits that follow:
//! each chunk lands on a narrow range of leaf pages, instead of each id on a
//! page of its own. `merged_through` moves with the last chunk; a crash
//! before that only repeats the merge. Retention deletes only merged events
//! (see `retention`), so the tail stays a range of seq.
//!
//! Writers (any process: the host, a CLI publishing into the same file)
//! catch up at the start of each write transaction, under SQLite's write
//! lock, so their view of the ids is complete when they decide whether an
//! id is new. Readers look up the tail, then the index; a lookup that must
//! not miss (a user asking for one event) then scans the tail's rows.
//!
//! A Bloom filter over every id here ([`IdFilter`]) answers most lookups of
//! new ids (nearly every event consumed from Kafka) without the index.

use super::id_filter::IdFilter;
use super::{Op, StoreError};
use persona_bus_model::fast_map::FastMap;
use persona_bus_model::sync::Locked;
use rusqlite::{Connection, OptionalExtension};
use std::sync::{Mutex, MutexGuard};

/// Tail size that starts a merge, by default (`[store] id_tail`). Memory:
/// about 80 bytes an id, twice that while a merge runs.
pub const ID_TAIL: usize = 65_536;
/// A merge is written in this many transactions, one after each of the
/// commits that follow, so none holds the writer for long: a chunk of the
/// default tail is 1,024 ids. The chunks of one merge are disjoint ranges
/// of ids, so more of them touch no more index pages in all.
const CHUNKS: usize = 64;
/// Small tails (tests, a tuned `id_tail`) merge in one chunk or a few.
const MIN_CHUNK: usize = 256;

#[derive(Default)]
struct Tail {
    /// Whether `ids` was read from the file yet.
    loaded: bool,
    /// Every event up to this seq is in `persona_event_ids`.
    merged_through: i64,
    /// Every event in `(merged_through, last_seq]` is in `ids`.
    last_seq: i64,
    ids: FastMap<Box<str>, i64>,
    merge: Option<Merge>,
    /// `prepare_merge` is sorting a copy of the tail.
    sorting: bool,
    /// Every id in the index and the tail, and maybe some deleted since
    /// (built when the tail is first loaded; `None` past its memory bound).
    filter: Option<IdFilter>,
    /// The writer's `PRAGMA data_version` when the tail was last complete
    /// at the start of a write transaction (`None`: catch up next time).
    writer_version: Option<i64>,
}

impl Tail {
    /// An id joins the tail, and so the filter.
    fn add(&mut self, id: Box<str>, seq: i64) {
        self.learn(&id);
        self.ids.insert(id, seq);
    }

    /// An id the filter must know: in the tail, or merged into the index.
    fn learn(&mut self, id: &str) {
        if let Some(filter) = &mut self.filter
            && !filter.insert(id)
        {
            tracing::info!(
                kb = filter.bytes() / 1024,
                "the event id filter reached store.id_filter_kb; new ids are looked up in the id index from now on"
            );
            self.filter = None;
        }
    }
}

/// A merge in progress: the tail up to `through`, sorted by id.
struct Merge {
    through: i64,
    sorted: Vec<(Box<str>, i64)>,
    next: usize,
}

pub(crate) struct Ids {
    tail: Mutex<Tail>,
    merge_at: usize,
    filter_max_bytes: usize,
}

/// Id lookups inside one write transaction, and the ids it adds.
pub(crate) struct TxIds<'a> {
    ids: &'a Ids,
    added: FastMap<String, i64>,
}

impl Ids {
    pub(crate) fn new(merge_at: usize, filter_max_bytes: usize) -> Self {
        Self {
            tail: Mutex::default(),
            merge_at: merge_at.max(1),
            filter_max_bytes,
        }
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.locked()
    }

    /// At the start of a write transaction (the write lock is held): catch
    /// up with what was written since, here or by another process.
    pub(crate) fn begin<'a>(&'a self, tx: &Connection) -> Result<TxIds<'a>, StoreError> {
        // `data_version` changes only when another connection (another
        // process: the CLI) has committed. Unchanged, the tail holds every
        // row already: this process's own rows joined it as they were
        // committed (`committed`). Catching up anyway cost two queries per
        // transaction, 5% of a lone publisher's time.
        let version = data_version(tx)?;
        let current = {
            let tail = self.tail();
            tail.loaded && tail.writer_version == Some(version)
        };
        if !current {
            self.catch_up(tx)?;
            self.tail().writer_version = Some(version);
        }
        Ok(TxIds {
            ids: self,
            added: FastMap::default(),
        })
    }

    /// Reads the rows written since the tail was last brought up to date
    /// (all of them after the last merge, the first time). Safe on any
    /// connection and snapshot: writes are serialized and seqs grow with
    /// them, so what a snapshot shows is every row up to some seq.
    pub(crate) fn catch_up(&self, conn: &Connection) -> Result<(), StoreError> {
        let merged_through = merged_through(conn)?;
        let mut tail = self.tail();
        // Rows after `read_from` are read below. Rows another process has
        // merged meanwhile are in the index, so they skip the tail, but the
        // filter must learn their ids all the same.
        let mut read_from = tail.last_seq;
        if !tail.loaded || merged_through > tail.merged_through {
            // Another process merged (or this is the first look): what it
            // merged leaves the tail.
            tail.ids.retain(|_, seq| *seq > merged_through);
            if tail
                .merge
                .as_ref()
                .is_some_and(|m| m.through <= merged_through)
            {
                tail.merge = None;
            }
            tail.merged_through = merged_through;
            tail.last_seq = tail.last_seq.max(merged_through);
            if !tail.loaded {
                // Once: the ids already merged (later ones come through the
                // rows below).
                tail.filter = load_filter(conn, self.filter_max_bytes)?;
            }
            // Just loaded from the index, or no filter to teach: the merged
            // rows need not be read.
            if !tail.loaded || tail.filter.is_none() {
                read_from = tail.last_seq;
            }
            tail.loaded = true;
        }
        let mut stmt = conn
            .prepare_cached("SELECT id, seq FROM persona_events WHERE seq > ?1")
            .op("prepare id tail")?;
        let rows = stmt
            .query_map([read_from], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .op("id tail")?;
        for row in rows {
            let (id, seq) = row.op("read id tail")?;
            if seq <= tail.merged_through {
                tail.learn(&id);
                continue;
            }
            tail.last_seq = tail.last_seq.max(seq);
            tail.add(id.into_boxed_str(), seq);
        }
        Ok(())
    }

    /// An event's seq, for a reader: the tail, then the index. Without
    /// `must_find` the caller has called [`Ids::catch_up`] in the same
    /// snapshot (a read transaction, or under the write lock), so an id the
    /// filter has never seen is not in the file, and the index is not
    /// probed. With `must_find`, the filter is not asked, and a miss in both
    /// scans the rows after the last merge this reader's snapshot has (a
    /// merge that committed after the snapshot began has already left the
    /// tail).
    pub(crate) fn seq_for_read(
        &self,
        conn: &Connection,
        id: &str,
        must_find: bool,
    ) -> Result<Option<i64>, StoreError> {
        {
            let tail = self.tail();
            if let Some(seq) = tail.ids.get(id) {
                return Ok(Some(*seq));
            }
            if !must_find && tail.filter.as_ref().is_some_and(|f| !f.may_contain(id)) {
                return Ok(None);
            }
        }
        if let Some(seq) = indexed(conn, id)? {
            return Ok(Some(seq));
        }
        if !must_find {
            return Ok(None);
        }
        conn.prepare_cached(
            "SELECT seq FROM persona_events \
             WHERE seq > (SELECT merged_through FROM persona_id_merge) AND id = ?1",
        )
        .op("prepare scan id tail")?
        .query_row([id], |r| r.get(0))
        .optional()
        .op("scan id tail")
    }

    /// Off the writer (the host's checkpointer thread): once the tail has
    /// reached its bound, copies and sorts it for the merge, so the sort
    /// holds up neither the writer nor lookups (the tail is locked only to
    /// copy it and to hand the result over).
    pub(crate) fn prepare_merge(&self) {
        let (through, mut sorted) = {
            let mut tail = self.tail();
            if tail.merge.is_some() || tail.sorting || tail.ids.len() < self.merge_at {
                return;
            }
            tail.sorting = true;
            let ids: Vec<(Box<str>, i64)> = tail
                .ids
                .iter()
                .map(|(id, seq)| (id.clone(), *seq))
                .collect();
            (tail.last_seq, ids)
        };
        sorted.sort_unstable();
        let mut tail = self.tail();
        tail.sorting = false;
        if tail.merge.is_none() && through > tail.merged_through {
            tail.merge = Some(Merge {
                through,
                sorted,
                next: 0,
            });
        }
    }

    /// After a commit: one chunk of the merge, in a transaction of its own
    /// (`conn` is the writer, outside any transaction). The merge stays in
    /// the tail while its chunk is written, so `prepare_merge` never starts
    /// a second one.
    pub(crate) fn merge_step(&self, conn: &Connection) -> Result<(), StoreError> {
        // Only the writer merges (its connection is `conn`), so the merge
        // can leave the lock while it writes: readers keep looking up.
        let (through, chunk, last) = {
            let mut tail = self.tail();
            if tail.merge.is_none() {
                // Sorted here only when no one prepared it (a process
                // without a checkpointer, or one far behind).
                if tail.sorting || tail.ids.len() < self.merge_at + self.merge_at / 4 {
                    return Ok(());
                }
                let mut sorted: Vec<(Box<str>, i64)> = tail
                    .ids
                    .iter()
                    .map(|(id, seq)| (id.clone(), *seq))
                    .collect();
                sorted.sort_unstable();
                tail.merge = Some(Merge {
                    through: tail.last_seq,
                    sorted,
                    next: 0,
                });
                // The sort was this step's work.
                return Ok(());
            }
            let Some(m) = tail.merge.as_ref() else {
                return Ok(());
            };
            let size = m.sorted.len().div_ceil(CHUNKS).max(MIN_CHUNK);
            let end = (m.next + size).min(m.sorted.len());
            (
                m.through,
                m.sorted[m.next..end].to_vec(),
                end == m.sorted.len(),
            )
        };
        let held = std::time::Instant::now();
        let tx = super::WriteTx::begin(conn).op("begin id merge")?;
        // Another process may have merged these meanwhile.
        let merged = merged_through(&tx)?;
        if through > merged {
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO persona_event_ids (id, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    )
                    .op("prepare id merge")?;
                for (id, seq) in &chunk {
                    stmt.execute(rusqlite::params![&**id, seq]).op("id merge")?;
                }
            }
            if last {
                tx.execute(
                    "UPDATE persona_id_merge SET merged_through = max(merged_through, ?1)",
                    [through],
                )
                .op("id merge through")?;
            }
            // A failed chunk stays where it was and is written again.
            tx.commit().op("commit id merge")?;
            super::note_hold("id merge chunk", held.elapsed());
            if !last {
                let mut tail = self.tail();
                if let Some(m) = tail.merge.as_mut() {
                    m.next += chunk.len();
                }
                return Ok(());
            }
        }
        let through = through.max(merged);
        let mut tail = self.tail();
        tail.merge = None;
        tail.ids.retain(|_, seq| *seq > through);
        tail.merged_through = tail.merged_through.max(through);
        Ok(())
    }

    /// Ids in the tail now (for tests and metrics).
    pub(crate) fn tail_len(&self) -> usize {
        self.tail().ids.len()
    }

    /// Memory of the id filter, in bytes (0 without one).
    #[cfg(test)]
    pub(crate) fn filter_bytes(&self) -> usize {
        self.tail().filter.as_ref().map_or(0, IdFilter::bytes)
    }
}

impl TxIds<'_> {
    /// The seq of an event, if it has a row: added in this transaction,
    /// in the tail, or in the index.
    pub(crate) fn seq(&self, tx: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
        match self.added.get(id) {
            Some(seq) => Ok(Some(*seq)),
            // Caught up at `begin` under the write lock: tail and index are
            // complete, no scan needed.
            None => self.ids.seq_for_read(tx, id, false),
        }
    }

    /// A row this transaction inserted.
    pub(crate) fn added(&mut self, id: &str, seq: i64) {
        self.added.insert(id.to_owned(), seq);
    }

    /// The transaction committed: its rows join the tail.
    pub(crate) fn committed(self) {
        if self.added.is_empty() {
            return;
        }
        let mut tail = self.ids.tail();
        // When the new rows directly follow the tail (always, unless a
        // statement added rows without telling), the tail is complete
        // through them; otherwise the next transaction reads the gap.
        let (lo, hi) = self
            .added
            .values()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        if lo == tail.last_seq + 1 && (hi - lo + 1) as usize == self.added.len() {
            tail.last_seq = hi;
        } else {
            tail.writer_version = None;
        }
        for (id, seq) in self.added {
            tail.add(id.into_boxed_str(), seq);
        }
    }
}

/// Changes whenever another connection commits to the file.
fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("PRAGMA data_version")
        .op("prepare data version")?
        .query_row([], |r| r.get(0))
        .op("data version")
}

fn merged_through(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT merged_through FROM persona_id_merge")
        .op("prepare merged through")?
        .query_row([], |r| r.get(0))
        .op("merged through")
}

/// A filter of the ids in the index, sized for them and a quarter more.
fn load_filter(conn: &Connection, max_bytes: usize) -> Result<Option<IdFilter>, StoreError> {
    if max_bytes == 0 {
        return Ok(None);
    }
    let count: i64 = conn
        .query_row("SELECT count(*) FROM persona_event_ids", [], |r| r.get(0))
        .op("count indexed ids")?;
    let Some(mut filter) = IdFilter::new(count.max(0) as usize / 4 * 5, max_bytes) else {
        tracing::info!(
            ids = count,
            max_kb = max_bytes / 1024,
            "the event id filter would pass store.id_filter_kb; new ids are looked up in the id index"
        );
        return Ok(None);
    };
    let mut stmt = conn
        .prepare("SELECT id FROM persona_event_ids")
        .op("prepare read indexed ids")?;
    let mut rows = stmt.query([]).op("read indexed ids")?;
    while let Some(row) = rows.next().op("read indexed id")? {
        // An id that is not text (written by hand) could not be added, and a
        // filter missing an id would answer wrongly: no filter then.
        let added = match row.get_ref(0).op("read indexed id")?.as_str() {
            Ok(id) => filter.insert(id),
            Err(_) => false,
        };
        if !added {
            return Ok(None);
        }
    }
    Ok(Some(filter))
}

fn indexed(conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT seq FROM persona_event_ids WHERE id = ?1")
        .op("prepare id lookup")?
        .query_row([id], |r| r.get(0))
        .optional()
        .op("id lookup")
}
