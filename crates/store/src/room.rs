//! The free-space floor: new publishes are refused while the data folder's
//! file system has less than `store.min_free_mb` free, so the outcomes of
//! events already accepted, and the WAL checkpoint, still find room.

use super::{Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Free bytes below which a failed write is put down to a full disk: less
/// than a few pages and their WAL frames.
const FULL_BELOW: u64 = 1 << 20;

/// How long a reading of the free space serves (a publish path may call
/// this tens of thousands of times a second; `statvfs` is a system call).
const FRESH_MS: i64 = 100;

/// The last reading.
#[derive(Default)]
pub(super) struct Room {
    read_at_ms: AtomicI64,
    free_bytes: AtomicU64,
    low: AtomicBool,
}

impl Store {
    /// Bytes free for an unprivileged writer on the data folder's file
    /// system.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let dir = self.path.parent().unwrap_or(&self.path);
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: `path` is a NUL-terminated string and `stat` a plain C
        // struct that statvfs fills.
        let stat = unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            stat
        };
        Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }

    /// `e`, or [`StoreError::Full`] when the write failed because the file
    /// system has no room left. SQLite reports some writes that ENOSPC
    /// refused as I/O errors rather than `SQLITE_FULL` (the WAL index
    /// growing: `SQLITE_IOERR_SHMSIZE`), and a group commit hands its
    /// followers the leader's error as text; both read as a full disk
    /// when almost nothing is free.
    pub fn name_full_disk(&self, e: StoreError) -> StoreError {
        let written = matches!(e, StoreError::Sqlite { .. } | StoreError::GroupCommit(_));
        if !written || e.is_out_of_space() {
            return e;
        }
        match self.free_bytes() {
            Ok(free) if free < FULL_BELOW => StoreError::Full(e.to_string()),
            _ => e,
        }
    }

    /// Refuses with [`StoreError::NoRoom`] while less than
    /// `store.min_free_mb` is free (read at most every 100 ms).
    pub fn check_room(&self) -> Result<(), StoreError> {
        let floor_mb = self.tuning.min_free_mb;
        if floor_mb == 0 {
            return Ok(());
        }
        let now = persona_bus_model::event::now_millis();
        if now - self.room.read_at_ms.load(Ordering::Relaxed) >= FRESH_MS {
            self.room.read_at_ms.store(now, Ordering::Relaxed);
            // A file system that cannot be read is not a reason to refuse.
            let free = self.free_bytes().unwrap_or(u64::MAX);
            self.room.free_bytes.store(free, Ordering::Relaxed);
            self.room
                .low
                .store(free < floor_mb << 20, Ordering::Relaxed);
        }
        if self.room.low.load(Ordering::Relaxed) {
            return Err(StoreError::NoRoom {
                free_mb: self.room.free_bytes.load(Ordering::Relaxed) >> 20,
                floor_mb,
            });
        }
        Ok(())
    }

    /// The floor, in MiB (0: none).
    pub fn min_free_mb(&self) -> u64 {
        self.tuning.min_free_mb
    }
}
