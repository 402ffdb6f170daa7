//! The pool's 24-bit device ids: which are taken, and the next free one.
//!
//! Rebuilt at every start from the device files (deleted ones included),
//! exactly as Docker rebuilds its bitmap; allocation advances from
//! `next_device_id` and wraps around.

use std::collections::BTreeSet;

use crate::dm::ThinId;
use crate::dm::thin_id::MAX_THIN_ID;

#[derive(Debug, Clone, Default)]
pub struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
}

impl IdAllocator {
    /// An allocator whose next search starts after `next_device_id`.
    pub fn new(next_device_id: u32) -> Self {
        IdAllocator {
            used: BTreeSet::new(),
            next: next_device_id & MAX_THIN_ID,
        }
    }

    pub fn mark_used(&mut self, id: ThinId) {
        self.used.insert(id.get());
    }

    pub fn free(&mut self, id: ThinId) {
        self.used.remove(&id.get());
    }

    pub fn is_used(&self, id: ThinId) -> bool {
        self.used.contains(&id.get())
    }

    /// The last id handed out (Docker's `next_device_id` field).
    pub fn next_device_id(&self) -> u32 {
        self.next
    }

    pub fn used_count(&self) -> usize {
        self.used.len()
    }

    /// Takes the next free id after the last one handed out.
    pub fn allocate(&mut self) -> Option<ThinId> {
        if self.used.len() > MAX_THIN_ID as usize {
            return None;
        }
        for _ in 0..=MAX_THIN_ID {
            self.next = (self.next + 1) & MAX_THIN_ID;
            if !self.used.contains(&self.next) {
                self.used.insert(self.next);
                return ThinId::new(self.next as u64).ok();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ThinId {
        ThinId::new(n as u64).unwrap()
    }

    #[test]
    fn starts_after_next_and_skips_used() {
        let mut a = IdAllocator::new(0);
        assert_eq!(a.allocate(), Some(id(1)));
        a.mark_used(id(2));
        assert_eq!(a.allocate(), Some(id(3)));
        a.free(id(1));
        assert_eq!(a.allocate(), Some(id(4)));
        assert_eq!(a.next_device_id(), 4);
    }

    #[test]
    fn wraps_around() {
        let mut a = IdAllocator::new(MAX_THIN_ID - 1);
        assert_eq!(a.allocate(), Some(id(MAX_THIN_ID)));
        assert_eq!(a.allocate(), Some(id(0)));
        assert_eq!(a.allocate(), Some(id(1)));
    }
}
