//! In-memory coordination of one store's layers: an exclusive hold per id
//! (create, remove, mount and unmount of the same layer never overlap,
//! different layers never wait for each other), reference counts of `get`,
//! and pins on parents while a child is being built from them.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::snapshot::LayerId;

#[derive(Default)]
struct State {
    held: HashSet<LayerId>,
    refs: HashMap<LayerId, u32>,
    pins: HashMap<LayerId, u32>,
}

/// Holds, reference counts and pins for one store.
#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    released: Condvar,
}

/// Exclusive hold on one id; released on drop.
pub struct Hold<'a> {
    gate: &'a Gate,
    id: LayerId,
}

/// A parent kept from removal while a child is built; released on drop.
pub struct Pin<'a> {
    gate: &'a Gate,
    id: LayerId,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, once nobody holds `id`.
    fn when_free(&self, id: &LayerId) -> MutexGuard<'_, State> {
        let mut st = self.state();
        while st.held.contains(id) {
            st = self
                .released
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st
    }

    /// Waits until nobody holds `id`, then holds it.
    pub fn hold(&self, id: &LayerId) -> Hold<'_> {
        let mut st = self.when_free(id);
        st.held.insert(id.clone());
        Hold {
            gate: self,
            id: id.clone(),
        }
    }

    /// Waits until nobody holds `id` (a remove in progress), then pins it.
    pub fn pin(&self, id: &LayerId) -> Pin<'_> {
        let mut st = self.when_free(id);
        *st.pins.entry(id.clone()).or_default() += 1;
        Pin {
            gate: self,
            id: id.clone(),
        }
    }

    /// True while a child is being built on `id`.
    pub fn pinned(&self, id: &LayerId) -> bool {
        self.state().pins.contains_key(id)
    }

    /// Outstanding `get`s of `id`.
    pub fn refs(&self, id: &LayerId) -> u32 {
        self.state().refs.get(id).copied().unwrap_or(0)
    }

    /// Every layer with outstanding `get`s.
    pub fn all_refs(&self) -> HashMap<LayerId, u32> {
        self.state().refs.clone()
    }

    /// Forgets every reference (after `cleanup` unmounted everything).
    pub fn clear_refs(&self) {
        self.state().refs.clear();
    }
}

impl Hold<'_> {
    pub fn id(&self) -> &LayerId {
        &self.id
    }

    pub fn refs(&self) -> u32 {
        self.gate.refs(&self.id)
    }

    /// Adds one reference; returns the new count.
    pub fn add_ref(&self) -> u32 {
        let mut st = self.gate.state();
        let n = st.refs.entry(self.id.clone()).or_default();
        *n += 1;
        *n
    }

    /// Drops one reference; returns the count left (`None` if there was none).
    pub fn drop_ref(&self) -> Option<u32> {
        let mut st = self.gate.state();
        let n = st.refs.get_mut(&self.id)?;
        *n -= 1;
        let left = *n;
        if left == 0 {
            st.refs.remove(&self.id);
        }
        Some(left)
    }

    /// Forgets all references (the layer is gone).
    pub fn forget_refs(&self) {
        self.gate.state().refs.remove(&self.id);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.gate.state().held.remove(&self.id);
        self.gate.released.notify_all();
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.state();
        if let Some(n) = st.pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                st.pins.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn id(s: &str) -> LayerId {
        LayerId::new(s).unwrap()
    }

    #[test]
    fn refs_and_pins() {
        let g = Gate::default();
        {
            let h = g.hold(&id("a"));
            assert_eq!(h.add_ref(), 1);
            assert_eq!(h.add_ref(), 2);
            assert_eq!(h.drop_ref(), Some(1));
        }
        assert_eq!(g.refs(&id("a")), 1);
        {
            let p = g.pin(&id("a"));
            assert!(g.pinned(&id("a")));
            drop(p);
        }
        assert!(!g.pinned(&id("a")));
        let h = g.hold(&id("a"));
        assert_eq!(h.drop_ref(), Some(0));
        assert_eq!(h.drop_ref(), None);
        assert!(g.all_refs().is_empty());
    }

    #[test]
    fn holds_exclude_the_same_id_only() {
        let g = Arc::new(Gate::default());
        let first = g.hold(&id("a"));
        let _other = g.hold(&id("b"));
        let g2 = g.clone();
        let waiter = std::thread::spawn(move || {
            let _h = g2.hold(&id("a"));
            g2.pinned(&id("marker"))
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a second hold of a waits");
        let _pin = g.pin(&id("marker"));
        drop(first);
        assert!(waiter.join().unwrap());
    }
}
