//! Per-key locks: an operation holds the keys it changes for its whole
//! duration (including the slow backend work), while operations on other
//! keys run in parallel. Keys are taken all at once or not at all, so two
//! operations that need overlapping sets never deadlock.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

/// The set of keys currently held.
#[derive(Default)]
pub struct KeyLocks {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

/// Holds some keys; releases them on drop.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    keys: Vec<String>,
}

impl KeyLocks {
    /// Blocks until none of `keys` is held, then holds all of them.
    pub fn lock<'a>(&'a self, keys: &[&str]) -> KeyGuard<'a> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys.dedup();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while keys.iter().any(|k| held.contains(k)) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        for k in &keys {
            held.insert(k.clone());
        }
        KeyGuard { locks: self, keys }
    }

    /// Holds all of `keys` if none is held now; `None` otherwise.
    pub fn try_lock<'a>(&'a self, keys: &[&str]) -> Option<KeyGuard<'a>> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.iter().any(|k| held.contains(*k)) {
            return None;
        }
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        for k in &keys {
            held.insert(k.clone());
        }
        Some(KeyGuard { locks: self, keys })
    }

    /// Number of keys held right now (diagnostics and tests).
    pub fn held_count(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for k in &self.keys {
            held.remove(k);
        }
        drop(held);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn same_key_is_exclusive_other_keys_are_not() {
        let locks = Arc::new(KeyLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for _ in 0..8 {
            let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
            threads.push(std::thread::spawn(move || {
                let _g = locks.lock(&["same"]);
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert_eq!(locks.held_count(), 0);

        // A holder of "a" does not block "b".
        let g = locks.lock(&["a"]);
        let l2 = locks.clone();
        let t = std::thread::spawn(move || {
            let _g = l2.lock(&["b", "b"]);
        });
        t.join().unwrap();
        drop(g);
    }

    #[test]
    fn overlapping_sets_do_not_deadlock() {
        let locks = Arc::new(KeyLocks::default());
        let mut threads = Vec::new();
        for i in 0..16 {
            let locks = locks.clone();
            threads.push(std::thread::spawn(move || {
                for _ in 0..50 {
                    let keys = if i % 2 == 0 { ["x", "y"] } else { ["y", "x"] };
                    let _g = locks.lock(&keys);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(locks.held_count(), 0);
    }
}
