//! The one way the workspace takes its locks.
//!
//! A lock whose holder panicked is taken anyway, with the data as the
//! holder left it, instead of failing every later user (the choice of
//! parking_lot, whose locks do not poison). The panics this can meet are
//! caught and reported where they happen (a handler call's `catch_unwind`
//! records a failed run; a thread's panic is logged), and no critical
//! section in the workspace leaves its data half-updated across a call that
//! can panic.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// `lock` for a `Mutex`.
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `read` and `write` for an `RwLock`.
pub trait ReadWrite<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> ReadWrite<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// `wait`, `wait_timeout` and `wait_timeout_while` for a `Condvar`.
pub trait Waits {
    fn wait_on<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
    fn wait_on_for<'a, T>(&self, guard: MutexGuard<'a, T>, at_most: Duration) -> MutexGuard<'a, T>;
    /// Waits while `blocked` holds, at most `at_most`.
    fn wait_on_while<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        at_most: Duration,
        blocked: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T>;
}

impl Waits for Condvar {
    fn wait_on<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_on_for<'a, T>(&self, guard: MutexGuard<'a, T>, at_most: Duration) -> MutexGuard<'a, T> {
        self.wait_timeout(guard, at_most)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    fn wait_on_while<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        at_most: Duration,
        blocked: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        self.wait_timeout_while(guard, at_most, blocked)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }
}
