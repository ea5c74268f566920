//! Poison-tolerant lock guards, shared by every module that holds a lock.
//!
//! A panicking actor handler is caught by supervision; a lock it poisoned must not take
//! the runtime down with it, so the guard is taken anyway (the data behind these locks is
//! kept consistent by each critical section, which never panics halfway).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `l.read()`, ignoring poison.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// `l.write()`, ignoring poison.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// `m.lock()`, ignoring poison.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
