//! A thin VFS over SQLite's own that hands a transaction's WAL frames to the
//! kernel in one write.
//!
//! SQLite writes each WAL frame as two `pwrite`s, its 24-byte header and
//! then the page. A one-event publish appends two to four frames, so four
//! to eight writes, and each one takes the file system's whole per-call path
//! (on ext4, `write_begin`/`write_end` of the same page-cache page every
//! time): a quarter of a lone publisher's time. Here a transaction's frames
//! gather in memory and reach the WAL file in one write, made inside the
//! `xWrite` call that brings the commit frame's page. So:
//!
//! - an error (a full disk) is returned by that call, where SQLite expects
//!   it, and the transaction fails as it would have;
//! - the frames are in the file before SQLite makes the commit visible to
//!   other connections and processes: it writes the wal-index header only
//!   after the last frame's write has returned.
//!
//! The WAL file is wrapped, and the database file only for its wal-index
//! locks (below); journals and temporary files are the default VFS's own
//! objects, untouched. Files written
//! through this VFS are ordinary SQLite files: a process that opens them
//! with the default VFS (the `sqlite3` shell) reads and writes them as
//! usual, with the usual locks.
//!
//! What is gathered, and why each rule keeps SQLite's guarantees:
//! - A frame header (a 24-byte write) starts or extends the gathered run;
//!   its page (the next write, right after it) joins it. When the header
//!   marks a commit (a non-zero database size), the run is written as soon
//!   as that page has joined it.
//! - Frames that are not a commit (a large transaction spilling pages
//!   before it commits) stay gathered until the commit, until
//!   [`MAX_GATHERED`], or until any other call on the file. No other
//!   connection reads frames that are not committed.
//! - Any write that does not continue the run, and every other call on the
//!   file (read, sync, truncate, size, close, locks, file controls), first
//!   writes what is gathered: SQLite sees the file exactly as it wrote it.
//! - A frame header written right after a read goes straight to the file.
//!   That is how SQLite rewrites checksums after a transaction overwrote
//!   its own frames (`walRewriteChecksums`: read a frame, write its
//!   header), and no page follows such a header to carry it out.
//! - Every lock SQLite takes or releases on the wal-index (`xShmLock` on
//!   the database file, wrapped for that alone) first writes what is
//!   gathered. A transaction that spilled frames and then rolled back ends
//!   by releasing the write lock: its frames reach the file then, still
//!   under the lock, as SQLite would have written them. Without this they
//!   could wait in memory until this connection's next use of the WAL,
//!   after another process had written its own frames at those offsets.
//!
//! A WAL whose database file is not this VFS's own is not gathered at all.

use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The VFS name connections open with.
pub(crate) const NAME: &CStr = c"persona-wal";

/// What is gathered is written once it reaches this (a large transaction's
/// pages), so memory stays small whatever the transaction. It is also the
/// most the default VFS takes in one write: `unix` masks a write's length
/// to 17 bits (`seekAndWriteFd`), so a longer one came back short and
/// SQLite reported a full disk.
const MAX_GATHERED: usize = 64 * 1024;

/// `WAL_FRAME_HDRSIZE` in SQLite.
const FRAME_HEADER: usize = 24;

/// The VFS this one wraps (the platform's default, `unix` on Linux).
static REAL: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Registers the VFS once per process; every later call returns the first
/// result.
pub(crate) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: `sqlite3_vfs_find` initializes SQLite and returns the
            // default VFS, which lives for the whole process. Ours is a copy
            // of it with our `xOpen` and a larger file object, leaked so it
            // outlives every connection.
            unsafe {
                let real = ffi::sqlite3_vfs_find(ptr::null());
                if real.is_null() {
                    return Err("SQLite has no default VFS".to_owned());
                }
                let mut ours = *real;
                ours.szOsFile = c_int::try_from(REAL_AT)
                    .ok()
                    .and_then(|at| at.checked_add((*real).szOsFile))
                    .ok_or("the default VFS's file object is too large")?;
                ours.zName = NAME.as_ptr();
                ours.pNext = ptr::null_mut();
                ours.xOpen = Some(open);
                REAL.store(real, Ordering::Release);
                let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(ours)), 0);
                if rc != ffi::SQLITE_OK {
                    return Err(format!("registering the WAL-writes VFS failed (code {rc})"));
                }
                Ok(())
            }
        })
        .clone()
}

/// The run of frames gathered for one WAL file.
struct Gathered {
    bytes: Vec<u8>,
    /// File offset of `bytes[0]`.
    start: i64,
    /// The last frame header gathered marks a commit.
    commit: bool,
    /// The last call on the file was a read.
    after_read: bool,
}

/// A WAL file: our part first, the default VFS's file object after it at
/// [`REAL_AT`].
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    gathered: *mut Gathered,
    /// Its database file (a [`DbFile`]), which points back here.
    db: *mut ffi::sqlite3_file,
}

/// A main database file: the default VFS's, with its wal-index locks
/// writing out what its WAL gathered first.
#[repr(C)]
struct DbFile {
    base: ffi::sqlite3_file,
    /// Its open WAL file (a [`WalFile`]), or null.
    wal: *mut ffi::sqlite3_file,
}

/// Where the default VFS's file object starts inside ours.
const REAL_AT: usize = (max(size_of::<WalFile>(), size_of::<DbFile>()) + 15) & !15;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: a WAL file is never memory-mapped and has no shared
    // memory of its own (the wal-index belongs to the database file).
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(wal_read),
    xWrite: Some(write),
    xTruncate: Some(wal_truncate),
    xSync: Some(wal_sync),
    xFileSize: Some(wal_file_size),
    xLock: Some(wal_lock),
    xUnlock: Some(wal_unlock),
    xCheckReservedLock: Some(wal_check_reserved_lock),
    xFileControl: Some(wal_file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = REAL.load(Ordering::Acquire);
    // SAFETY: SQLite gives `file` our `szOsFile` bytes; the default VFS's
    // object fits at its start (other files) or at REAL_AT (WAL files).
    unsafe {
        let Some(real_open) = (*real_vfs).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let main_db = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
        // A WAL is gathered only when its database file is ours, whose
        // locks write out what is gathered (see the module doc).
        let db = if flags & ffi::SQLITE_OPEN_WAL != 0 {
            ffi::sqlite3_database_file_object(name)
        } else {
            ptr::null_mut()
        };
        let wal = !db.is_null() && ptr::eq((*db).pMethods, &DB_METHODS);
        if !main_db && !wal {
            // Journals, temporary files: the default VFS's file, as is.
            return real_open(real_vfs, name, file, flags, out_flags);
        }
        let inner = real_file(file);
        (*inner).pMethods = ptr::null();
        let rc = real_open(real_vfs, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            (*file).pMethods = ptr::null();
            return rc;
        }
        if main_db {
            if (*(*inner).pMethods).iVersion < 3 {
                // No shared memory, so no WAL to gather for: opened again
                // as the default VFS's own file.
                if let Some(close) = (*(*inner).pMethods).xClose {
                    close(inner);
                }
                return real_open(real_vfs, name, file, flags, out_flags);
            }
            ptr::write(
                file.cast::<DbFile>(),
                DbFile {
                    base: ffi::sqlite3_file {
                        pMethods: &DB_METHODS,
                    },
                    wal: ptr::null_mut(),
                },
            );
            return ffi::SQLITE_OK;
        }
        let gathered = Box::new(Gathered {
            bytes: Vec::new(),
            start: 0,
            commit: false,
            after_read: false,
        });
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                gathered: Box::into_raw(gathered),
                db,
            },
        );
        (*db.cast::<DbFile>()).wal = file;
        ffi::SQLITE_OK
    }
}

/// The default VFS's file object inside ours.
///
/// # Safety
/// `file` is a file object of this VFS's size.
unsafe fn real_file(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: REAL_AT is inside the object (szOsFile = REAL_AT + theirs).
    unsafe { file.cast::<u8>().add(REAL_AT).cast() }
}

/// The default VFS's methods for its file object inside ours.
///
/// # Safety
/// `file` is a WAL file opened by [`open`].
unsafe fn real_methods(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: `open` succeeded, so the default VFS set its methods.
    unsafe { &*(*real_file(file)).pMethods }
}

/// # Safety
/// `file` is a WAL file opened by [`open`] and not yet closed.
unsafe fn gathered<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Gathered {
    // SAFETY: set in `open`, freed only in `close`; SQLite uses a file
    // object from one thread at a time.
    unsafe { &mut *(*file.cast::<WalFile>()).gathered }
}

/// Writes what is gathered, in one write.
///
/// # Safety
/// `file` is a WAL file opened by [`open`] and not yet closed.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        let g = gathered(file);
        if g.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(write) = real_methods(file).xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        #[cfg(test)]
        tests::WRITES.with(|w| w.set(w.get() + 1));
        // A frame joins before the size is checked: write at most
        // MAX_GATHERED at a time.
        let mut rc = ffi::SQLITE_OK;
        let mut at = g.start;
        for chunk in g.bytes.chunks(MAX_GATHERED) {
            rc = write(
                real_file(file),
                chunk.as_ptr().cast(),
                chunk.len() as c_int,
                at,
            );
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += chunk.len() as i64;
        }
        // Written or failed, the run is done: after a failure SQLite rolls
        // the transaction back and never reads those frames.
        g.bytes.clear();
        g.commit = false;
        #[cfg(test)]
        tests::GATHERED.with(|g| g.set(0));
        rc
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as `gather`'s.
    let rc = unsafe { gather(file, data, amount, offset) };
    #[cfg(test)]
    // SAFETY: `file` is still open.
    tests::GATHERED.with(|g| g.set(unsafe { gathered(file) }.bytes.len()));
    rc
}

/// `xWrite`: gathers the write or writes it (see the module doc).
///
/// # Safety
/// `file` is a WAL file of ours, `data` holds `amount` bytes.
unsafe fn gather(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes a WAL file of ours and `amount` readable bytes.
    unsafe {
        let g = gathered(file);
        let after_read = std::mem::replace(&mut g.after_read, false);
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
        let continues = !g.bytes.is_empty() && offset == g.start + g.bytes.len() as i64;
        if bytes.len() == FRAME_HEADER && !after_read {
            if !g.bytes.is_empty() && !continues {
                let rc = flush(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            if g.bytes.is_empty() {
                g.start = offset;
            }
            g.bytes.extend_from_slice(bytes);
            // Bytes 4..8 of a frame header: the database size after a
            // commit, 0 in every other frame.
            g.commit = bytes[4..8] != [0, 0, 0, 0];
            return ffi::SQLITE_OK;
        }
        if continues {
            g.bytes.extend_from_slice(bytes);
            if g.commit || g.bytes.len() >= MAX_GATHERED {
                return flush(file);
            }
            return ffi::SQLITE_OK;
        }
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        #[cfg(test)]
        if bytes.len() == FRAME_HEADER {
            tests::REWRITTEN_HEADERS.with(|w| w.set(w.get() + 1));
        }
        #[cfg(test)]
        tests::WRITES.with(|w| w.set(w.get() + 1));
        match real_methods(file).xWrite {
            Some(write) => write(real_file(file), data, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file of ours once; its state is freed here.
    unsafe {
        let flushed = flush(file);
        let closed = match real_methods(file).xClose {
            Some(close) => close(real_file(file)),
            None => ffi::SQLITE_OK,
        };
        let wal = file.cast::<WalFile>();
        drop(Box::from_raw((*wal).gathered));
        if !(*wal).db.is_null() {
            (*(*wal).db.cast::<DbFile>()).wal = ptr::null_mut();
        }
        (*file).pMethods = ptr::null();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

/// Before a read of the WAL: writes out what is gathered, and notes the
/// read (a frame header written next is a checksum rewrite).
///
/// # Safety
/// `file` is a WAL file opened by [`open`] and not yet closed.
unsafe fn flush_for_read(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        let rc = flush(file);
        if rc == ffi::SQLITE_OK {
            gathered(file).after_read = true;
        }
        rc
    }
}

/// Defines a method that calls the default VFS's own (`$missing` when it
/// has none). With `before flush`, a WAL's method first writes out what is
/// gathered (see the module doc).
macro_rules! forwarding {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr $(, before $before:ident)?) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> $ret {
            // SAFETY: SQLite passes a file of ours, opened by `open`.
            unsafe {
                $(
                    let rc = $before(file);
                    if rc != ffi::SQLITE_OK {
                        return rc;
                    }
                )?
                match real_methods(file).$field {
                    Some(f) => f(real_file(file), $($arg),*),
                    None => $missing,
                }
            }
        }
    };
}

forwarding!(wal_read, xRead, (data: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ, before flush_for_read);
forwarding!(wal_truncate, xTruncate, (size: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_TRUNCATE, before flush);
forwarding!(wal_sync, xSync, (flags: c_int) -> c_int, ffi::SQLITE_IOERR_FSYNC, before flush);
forwarding!(wal_file_size, xFileSize, (size: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT, before flush);
forwarding!(wal_lock, xLock, (level: c_int) -> c_int, ffi::SQLITE_IOERR_LOCK, before flush);
forwarding!(wal_unlock, xUnlock, (level: c_int) -> c_int, ffi::SQLITE_IOERR_UNLOCK, before flush);
forwarding!(wal_check_reserved_lock, xCheckReservedLock, (out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, before flush);
forwarding!(wal_file_control, xFileControl, (op: c_int, arg: *mut c_void) -> c_int, ffi::SQLITE_NOTFOUND, before flush);
// Both kinds of file: pure questions, nothing to write out first.
forwarding!(sector_size, xSectorSize, () -> c_int, 4096);
forwarding!(device_characteristics, xDeviceCharacteristics, () -> c_int, 0);

static DB_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(db_close),
    xRead: Some(db_read),
    xWrite: Some(db_write),
    xTruncate: Some(db_truncate),
    xSync: Some(db_sync),
    xFileSize: Some(db_file_size),
    xLock: Some(db_lock),
    xUnlock: Some(db_unlock),
    xCheckReservedLock: Some(db_check_reserved_lock),
    xFileControl: Some(db_file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(db_shm_map),
    xShmLock: Some(db_shm_lock),
    xShmBarrier: Some(db_shm_barrier),
    xShmUnmap: Some(db_shm_unmap),
    xFetch: Some(db_fetch),
    xUnfetch: Some(db_unfetch),
};

forwarding!(db_read, xRead, (data: *mut c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ);
forwarding!(db_write, xWrite, (data: *const c_void, amount: c_int, offset: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_WRITE);
forwarding!(db_truncate, xTruncate, (size: ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_TRUNCATE);
forwarding!(db_sync, xSync, (flags: c_int) -> c_int, ffi::SQLITE_IOERR_FSYNC);
forwarding!(db_file_size, xFileSize, (size: *mut ffi::sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT);
forwarding!(db_lock, xLock, (level: c_int) -> c_int, ffi::SQLITE_IOERR_LOCK);
forwarding!(db_unlock, xUnlock, (level: c_int) -> c_int, ffi::SQLITE_IOERR_UNLOCK);
forwarding!(db_check_reserved_lock, xCheckReservedLock, (out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK);
forwarding!(db_file_control, xFileControl, (op: c_int, arg: *mut c_void) -> c_int, ffi::SQLITE_NOTFOUND);
forwarding!(db_shm_map, xShmMap, (page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR_SHMMAP);
forwarding!(db_shm_unmap, xShmUnmap, (delete: c_int) -> c_int, ffi::SQLITE_OK);
forwarding!(db_fetch, xFetch, (offset: ffi::sqlite3_int64, amount: c_int, out: *mut *mut c_void) -> c_int, {
    *out = ptr::null_mut();
    ffi::SQLITE_OK
});
forwarding!(db_unfetch, xUnfetch, (offset: ffi::sqlite3_int64, page: *mut c_void) -> c_int, ffi::SQLITE_OK);

unsafe extern "C" fn db_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite passes a database file of ours.
    unsafe {
        if let Some(f) = real_methods(file).xShmBarrier {
            f(real_file(file));
        }
    }
}

/// Takes or releases a wal-index lock, after writing out what the WAL
/// gathered (see the module doc: a rolled-back transaction's frames).
unsafe extern "C" fn db_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite passes a database file of ours; its `wal` is an open
    // WAL file of ours or null (cleared when the WAL closes).
    unsafe {
        let wal = (*file.cast::<DbFile>()).wal;
        if !wal.is_null() {
            let rc = flush(wal);
            // A release goes ahead regardless: what failed to be written
            // was never committed, and SQLite never reads it.
            if rc != ffi::SQLITE_OK && flags & ffi::SQLITE_SHM_UNLOCK == 0 {
                return rc;
            }
        }
        match real_methods(file).xShmLock {
            Some(f) => f(real_file(file), offset, n, flags),
            None => ffi::SQLITE_IOERR_SHMLOCK,
        }
    }
}

unsafe extern "C" fn db_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a database file of ours once (its WAL first).
    unsafe {
        let wal = (*file.cast::<DbFile>()).wal;
        if !wal.is_null() {
            (*wal.cast::<WalFile>()).db = ptr::null_mut();
        }
        let rc = match real_methods(file).xClose {
            Some(close) => close(real_file(file)),
            None => ffi::SQLITE_OK,
        };
        (*file).pMethods = ptr::null();
        rc
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};
    use std::cell::Cell;
    use std::path::Path;

    thread_local! {
        /// Writes to WAL files made on this thread.
        pub(super) static WRITES: Cell<u64> = const { Cell::new(0) };
        /// Bytes gathered on this thread and not yet written.
        pub(super) static GATHERED: Cell<usize> = const { Cell::new(0) };
        /// Frame headers written straight to the file (checksum rewrites).
        pub(super) static REWRITTEN_HEADERS: Cell<u64> = const { Cell::new(0) };
    }

    fn open(path: &Path) -> Connection {
        super::register().unwrap();
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            super::NAME,
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS t_v ON t(v);",
        )
        .unwrap();
        conn
    }

    /// One transaction of far more pages than one write may carry.
    #[test]
    fn a_large_transaction_is_written_whole() {
        let (dir, path, conn) = fresh();
        let pad = "y".repeat(500);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 0..3_000 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{i}-{pad}")])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&Connection::open(&path).unwrap()), 3_000);
        assert_eq!(count(&as_after_a_crash(&path, dir.path())), 3_000);
    }

    /// A new database file of this VFS in a folder of its own.
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        let conn = open(&path);
        (dir, path, conn)
    }

    /// The database and its WAL as a crash would leave them (no wal-index:
    /// SQLite rebuilds it from the WAL, checking every frame's checksum),
    /// opened with the default VFS.
    fn as_after_a_crash(path: &Path, dir: &Path) -> Connection {
        let copy = dir.join("copy.db");
        std::fs::copy(path, &copy).unwrap();
        std::fs::copy(path.with_extension("db-wal"), dir.join("copy.db-wal")).unwrap();
        Connection::open(&copy).unwrap()
    }

    fn count(conn: &Connection) -> i64 {
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_small_transaction_reaches_the_wal_in_one_write() {
        let (dir, path, conn) = fresh();
        conn.execute("INSERT INTO t (v) VALUES ('warm')", [])
            .unwrap();
        let before = WRITES.with(Cell::get);
        for i in 0..100 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
        // Each insert writes a frame for the table and one for the index,
        // sometimes more: four or more writes each without gathering.
        assert_eq!(WRITES.with(Cell::get) - before, 100);
        // Another connection, of the default VFS, sees every commit.
        let other = Connection::open(&path).unwrap();
        assert_eq!(count(&other), 101);
        assert_eq!(count(&as_after_a_crash(&path, dir.path())), 101);
    }

    /// A transaction larger than the page cache spills frames before it
    /// commits, then changes spilled pages again: SQLite overwrites those
    /// frames and rewrites the checksums of every frame after them. A copy
    /// of the files, as a crash would leave them, still holds every commit.
    #[test]
    fn spilled_and_rewritten_frames_survive_a_crash() {
        let (dir, path, conn) = fresh();
        conn.execute_batch("PRAGMA cache_size = 16").unwrap();
        let pad = "x".repeat(300);
        for round in 0..3 {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..2_000 {
                conn.execute(
                    "INSERT INTO t (v) VALUES (?1)",
                    [format!("{round}-{i}-{pad}")],
                )
                .unwrap();
            }
            // Pages spilled long ago change again.
            conn.execute("UPDATE t SET v = v || '!' WHERE k % 97 = 0", [])
                .unwrap();
            conn.execute_batch("COMMIT").unwrap();
            assert_eq!(
                count(&as_after_a_crash(&path, dir.path())),
                2_000 * (round + 1)
            );
        }
        assert!(
            REWRITTEN_HEADERS.with(Cell::get) > 0,
            "the transactions made SQLite rewrite frame checksums"
        );
        // A rolled-back transaction leaves nothing, gathered or spilled.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 0..2_000 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("gone-{i}-{pad}")])
                .unwrap();
        }
        conn.execute_batch("ROLLBACK").unwrap();
        conn.execute("INSERT INTO t (v) VALUES ('last')", [])
            .unwrap();
        assert_eq!(count(&as_after_a_crash(&path, dir.path())), 6_001);
        assert_eq!(count(&conn), 6_001);
    }

    /// A transaction that spilled frames and rolled back leaves nothing in
    /// memory: another process then writes its own frames at the same
    /// offsets, and this connection's next use of the WAL must not write
    /// the old ones over them.
    #[test]
    fn a_rolled_back_spill_never_lands_on_another_writers_frames() {
        let (dir, path, conn) = fresh();
        conn.execute_batch("PRAGMA cache_size = 16").unwrap();
        conn.execute("INSERT INTO t (v) VALUES ('first')", [])
            .unwrap();
        let pad = "z".repeat(300);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        // Until a statement ends with spilled frames gathered (a later read
        // of the WAL would write them out).
        let mut i = 0;
        while GATHERED.with(Cell::get) == 0 {
            assert!(
                i < 5_000,
                "the transaction never ended a statement with frames gathered"
            );
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("gone-{i}-{pad}")])
                .unwrap();
            i += 1;
        }
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(GATHERED.with(Cell::get), 0, "the rollback wrote them out");
        // Another process (the default VFS) writes where the spill was.
        let other = Connection::open(&path).unwrap();
        for i in 0..50 {
            other
                .execute(
                    "INSERT INTO t (v) VALUES (?1)",
                    [format!("other-{i}-{pad}")],
                )
                .unwrap();
        }
        // This connection reads (the WAL's new frames) and writes again.
        assert_eq!(count(&conn), 51);
        conn.execute("INSERT INTO t (v) VALUES ('last')", [])
            .unwrap();
        assert_eq!(count(&Connection::open(&path).unwrap()), 52);
        assert_eq!(count(&as_after_a_crash(&path, dir.path())), 52);
    }

    /// After a checkpoint the WAL restarts from its beginning, overwriting
    /// old frames in place; a reader of another connection reads only
    /// committed frames throughout.
    #[test]
    fn a_restarted_wal_and_concurrent_readers_see_every_commit() {
        let (dir, path, conn) = fresh();
        let reader = Connection::open(&path).unwrap();
        for round in 0..5_i64 {
            for i in 0..200 {
                conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{round}-{i}")])
                    .unwrap();
                if i % 50 == 0 {
                    let seen: i64 = reader
                        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .unwrap();
                    assert_eq!(seen, round * 200 + i + 1);
                }
            }
            let (busy, _, _): (i64, i64, i64) = conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(busy, 0);
        }
        assert_eq!(count(&as_after_a_crash(&path, dir.path())), 1_000);
    }
}
