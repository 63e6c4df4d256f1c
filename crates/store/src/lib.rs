//! The SQLite store: the only module that speaks SQL.
//!
//! One writer connection (SQLite has one writer anyway) behind a mutex, and a
//! small pool of reader connections, which WAL mode lets run beside it. Every
//! method is blocking; async callers run them on a blocking thread.

mod alerts;
mod config;
mod dead_letters;
mod events;
mod group_commit;
mod handlers;
mod id_filter;
mod ids;
mod outbox;
mod outcomes;
mod remote;
mod replays;
mod retention;
mod rollouts;
mod room;
mod schema;
mod state;
mod subscriptions;
mod wal_writes;

pub use alerts::Delivery;
pub use config::StoreConfig;
pub use dead_letters::DeadLetterFilter;
pub use events::{ClaimScope, EventFilter, EventPage, Gathered};
pub use group_commit::GroupCommit;
pub use handlers::HandlerRecord;
pub use ids::ID_TAIL;
pub use outcomes::{Committed, DeadLetter, Execution};
pub use remote::RemoteOutcome;
pub use replays::{Replay, ReplayRange};
pub use retention::{Horizons, Pass, Pruned, RetentionConfig, StoreSize};
pub use rollouts::{ShadowDiff, ShadowTally};
pub use subscriptions::NewSubscription;

use persona_bus_model::sync::Locked;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Holding the writer this long or longer is logged (target
/// `persona_bus::slow`, debug): commits wait meanwhile.
const SLOW_HOLD: Duration = Duration::from_millis(40);

/// Logs a hold of the writer of `took` by `what` when it was long.
pub(crate) fn note_hold(what: &'static str, took: Duration) {
    if took >= SLOW_HOLD {
        tracing::debug!(target: "persona_bus::slow", what, ms = took.as_secs_f64() * 1000.0, "held the store's writer");
    }
}

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "bus.db";

/// A store operation that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sqlite ({op}): {source}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path} has schema version {found}, newer than this build knows ({known}): upgrade persona-bus"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("event {0} not found")]
    EventNotFound(String),
    #[error("an event with id {0} is stored already")]
    DuplicateEvent(String),
    #[error("storing the event failed: {0}")]
    GroupCommit(String),
    #[error("cannot set up SQLite: {0}")]
    Vfs(String),
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    #[error("subscription {0} not found")]
    SubscriptionNotFound(String),
    #[error("replay {0} not found")]
    ReplayNotFound(i64),
    #[error(
        "only {free_mb} MiB free for the data folder, below store.min_free_mb = {floor_mb}: new events are refused until space is freed"
    )]
    NoRoom { free_mb: u64, floor_mb: u64 },
    #[error("the data folder's file system is full ({0})")]
    Full(String),
}

impl StoreError {
    /// Whether the disk (or the floor kept free on it) refused the write:
    /// a client should retry later, and nothing it sent was stored.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::NoRoom { .. } | Self::Full(_) => true,
            Self::Sqlite { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            // A group commit hands its callers the leader's error as text;
            // SQLite's words for SQLITE_FULL have not changed in decades.
            Self::GroupCommit(m) => {
                m.contains("database or disk is full") || m.contains("store.min_free_mb")
            }
            _ => false,
        }
    }
}

/// Attaches the operation name to a rusqlite error.
pub(crate) trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Op<T> for rusqlite::Result<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { op, source })
    }
}

/// Durability of a commit. `Normal` (the default) survives a crash of the
/// process; `Full` also survives a power cut, at an fsync per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Normal,
    Full,
}

/// How a process uses the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A short-lived tool (CLI publish, inspection): SQLite checkpoints the
    /// WAL itself as it grows.
    Tool,
    /// The host: commits never checkpoint (that would put an fsync on the
    /// event path); a background thread checkpoints instead.
    Host,
}

pub struct Store {
    path: PathBuf,
    role: Role,
    /// Memory of the connections (`[store]` in the config).
    tuning: StoreConfig,
    /// Dual write: new events are also queued for Kafka (see `outbox`).
    outbox: std::sync::atomic::AtomicBool,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Handler name -> number in `persona_handler_names` (the ledger and
    /// executions store the number). Only committed numbers are cached.
    handler_nos: Mutex<persona_bus_model::fast_map::FastMap<String, i64>>,
    /// The event id index's in-memory tail (see `ids`).
    ids: ids::Ids,
    /// The free-space floor for publishes (`check_room`).
    room: room::Room,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and migrates it,
    /// for a tool.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, Sync::Normal, Role::Tool)
    }

    pub fn open_with(data_dir: &Path, sync: Sync, role: Role) -> Result<Self, StoreError> {
        Self::open_tuned(data_dir, sync, role, StoreConfig::default())
    }

    /// [`Store::open_with`] with the connections' memory set.
    pub fn open_tuned(
        data_dir: &Path,
        sync: Sync,
        role: Role,
        tuning: StoreConfig,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let writer = connect(&path, sync, role, tuning.cache_kb)?;
        migrate(&writer, &path)?;
        // The id filter is read from the whole index when the store is first
        // written or looked up by id: worth it in a host, which then runs for
        // days, not in a CLI command that publishes one event.
        let filter_bytes = match role {
            Role::Host => tuning.id_filter_kb.saturating_mul(1024),
            Role::Tool => 0,
        };
        let ids = ids::Ids::new(tuning.id_tail, filter_bytes);
        Ok(Self {
            path,
            role,
            tuning,
            outbox: std::sync::atomic::AtomicBool::new(false),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            handler_nos: Mutex::new(persona_bus_model::fast_map::FastMap::default()),
            ids,
            room: room::Room::default(),
        })
    }

    /// Checkpoints the WAL into the database without blocking writers
    /// (PASSIVE). The host calls this from a background thread.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        self.read(passive_checkpoint)
    }

    /// Checkpoints with the writer held, so nothing is appended meanwhile:
    /// unless a reader still needs old frames, the WAL is then wholly in
    /// the database and the next write transaction starts the WAL over
    /// from its beginning.
    ///
    /// Why: SQLite rewinds the WAL only when a write transaction finds it
    /// wholly checkpointed. Under a steady load a checkpoint beside the
    /// writers never gets there (frames are appended while it copies), so
    /// the WAL grew without end (600 MB in a 10 s benchmark), and each new
    /// frame went to a new block of the file, which the file system
    /// allocates and zeroes. Run after [`Store::checkpoint`] has copied the
    /// bulk, this copies only what came since.
    pub fn checkpoint_holding_writer(&self) -> Result<Checkpoint, StoreError> {
        let conn = self.writer();
        let held = std::time::Instant::now();
        let done = passive_checkpoint(&conn);
        note_hold("WAL checkpoint", held.elapsed());
        done
    }

    /// From now on, every event this process stores is also queued for
    /// Kafka (plan phase 1, dual write).
    pub fn enable_outbox(&self) {
        self.outbox
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn outbox_enabled(&self) -> bool {
        self.outbox.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer connection. A panic while holding it cannot leave a
    /// transaction half-applied (rusqlite rolls back on drop), so a poisoned
    /// lock is safe to take over.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.locked()
    }

    /// The numbers of these handlers, registering the new ones (each in a
    /// committed statement of its own, before the caller's transaction, so
    /// a rolled-back batch never leaves a number cached that the file does
    /// not have).
    fn handler_numbers<'a>(
        &self,
        conn: &Connection,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<MutexGuard<'_, persona_bus_model::fast_map::FastMap<String, i64>>, StoreError> {
        let mut cache = self.handler_nos.locked();
        for name in names {
            if cache.contains_key(name) {
                continue;
            }
            let no: i64 = conn
                .prepare_cached(
                    "INSERT INTO persona_handler_names (name) VALUES (?1) \
                     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING no",
                )
                .op("prepare handler number")?
                .query_row([name], |r| r.get(0))
                .op("handler number")?;
            cache.insert(name.to_owned(), no);
        }
        Ok(cache)
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer, with the event
    /// ids caught up (`ids::TxIds`); then a step of the id merge, if one is
    /// due.
    pub(crate) fn write_tx<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection, &mut ids::TxIds<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.writer();
        let tx = WriteTx::begin(&conn).op(what)?;
        let mut ids = self.ids.begin(&tx)?;
        let out = f(&tx, &mut ids)?;
        tx.commit().op(what)?;
        ids.committed();
        self.merge_ids(&conn);
        Ok(out)
    }

    /// After a commit on the writer (`conn`): a step of the id merge, if one
    /// is due (see `ids`).
    fn merge_ids(&self, conn: &Connection) {
        if let Err(e) = self.ids.merge_step(conn) {
            // The tail stays in memory and the merge is tried again after
            // the next commit; nothing is lost meanwhile.
            tracing::warn!(error = %e, "merging event ids into their index failed; retrying after the next commit");
        }
    }

    /// The seq of one event's row, for a reader (see `ids`).
    fn seq_of(&self, conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
        self.ids.catch_up(conn)?;
        self.ids.seq_for_read(conn, id, true)
    }

    /// Sorts the id tail for its next merge once it is due, holding
    /// neither the writer nor the tail meanwhile (the host calls this from
    /// a background thread; see `ids`).
    pub fn prepare_id_merge(&self) {
        self.ids.prepare_merge();
    }

    /// Ids in the in-memory tail of the id index.
    pub fn id_tail_len(&self) -> usize {
        self.ids.tail_len()
    }

    /// Runs `f` on a pooled reader connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.locked().pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(
                &self.path,
                Sync::Normal,
                self.role,
                (self.tuning.cache_kb / 4).max(256),
            )?,
        };
        let result = f(&conn);
        let mut pool = self.readers.locked();
        if pool.len() < self.tuning.readers {
            pool.push(conn);
        }
        result
    }
}

/// An IMMEDIATE transaction on the writer, rolled back unless committed.
/// Every write transaction of the store begins here.
///
/// rusqlite's `Transaction` parses `BEGIN IMMEDIATE` and `COMMIT` anew each
/// time (`execute_batch`); a lone publisher commits once per event, and
/// those two parses were about 3% of its time. These use the connection's
/// statement cache.
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> WriteTx<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self { conn, open: true })
    }

    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // A failed statement or COMMIT (SQLITE_BUSY, a full disk) leaves
        // the transaction open; nothing of it may stay.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// What `PRAGMA wal_checkpoint` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Frames in the WAL since it last started over.
    pub wal_frames: i64,
    /// How many of those are now in the database file.
    pub checkpointed: i64,
}

fn passive_checkpoint(conn: &Connection) -> Result<Checkpoint, StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Checkpoint {
            wal_frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    })
    .op("checkpoint")
}

fn connect(path: &Path, sync: Sync, role: Role, cache_kb: u32) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // Each transaction's WAL frames reach the file in one write (see
    // `wal_writes`).
    let new_file = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    wal_writes::register().map_err(StoreError::Vfs)?;
    let conn = Connection::open_with_flags_and_vfs(path, flags, wal_writes::NAME).op("open")?;
    // Another process (a CLI publisher) may hold the write lock for a moment.
    conn.busy_timeout(Duration::from_secs(10))
        .op("busy_timeout")?;
    let synchronous = match sync {
        Sync::Normal => "NORMAL",
        Sync::Full => "FULL",
    };
    let autocheckpoint = match role {
        Role::Tool => 1000,
        Role::Host => 0,
    };
    // 1 KiB pages: a publish or an outcome touches a few rows spread over
    // several b-trees, and each touched page is written whole to the WAL.
    // Smaller pages cut the bytes per transaction by 3x and nearly doubled
    // single-event insert throughput here. Takes effect only when the
    // database is created.
    //
    // Incremental auto-vacuum lets retention give pages back to the file
    // system in short steps (see `retention`). It can be set only before
    // the file has a header (WAL mode writes one), and asking for it on an
    // existing file writes the header, which a full disk refuses: so only
    // for a new file.
    let auto_vacuum = if new_file {
        "PRAGMA auto_vacuum = INCREMENTAL;"
    } else {
        ""
    };
    let pragmas = format!(
        "PRAGMA page_size = 1024;
         {auto_vacuum}
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA wal_autocheckpoint = {autocheckpoint};
         PRAGMA journal_size_limit = 67108864;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{cache_kb};
         PRAGMA foreign_keys = ON;"
    );
    // Two processes creating the same file at once (a host starting beside
    // a CLI): switching a new file to WAL takes a lock that SQLite does not
    // wait for (no busy handler), so wait here, as busy_timeout would.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.execute_batch(&pragmas) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            done => break done.op("pragmas")?,
        }
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .op("read schema version")? as usize;
    if version > schema::MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: schema::MIGRATIONS.len(),
        });
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version) {
        // Each migration and its version bump commit together, or not at
        // all. The version is read again under the write lock: another
        // process opening the same store at the same moment (a CLI beside a
        // starting host) may have applied it meanwhile.
        let step = || -> rusqlite::Result<bool> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if now as usize > i {
                conn.execute_batch("COMMIT")?;
                return Ok(false);
            }
            conn.execute_batch(&format!("{sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
            Ok(true)
        };
        match step() {
            Ok(true) => {
                tracing::info!(version = i + 1, path = %path.display(), "applied schema migration")
            }
            Ok(false) => {}
            Err(source) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(StoreError::Sqlite {
                    op: "migrate",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Headers are stored as a JSON array of `[key, value]` pairs.
pub(crate) fn headers_to_json(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn headers_from_json(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

#[cfg(test)]
mod tests;
