//! Background deletion of removed snapshots' layers.
//!
//! containerd's `Remove` only needs the snapshot gone from the API: the key
//! is free and no Walk, Stat or Mounts sees it once the removal record is
//! committed. Deleting the layer is slow kernel work on devicemapper (a
//! thin device's deactivation waits for RCU grace periods: ~40 ms in the
//! test VM), and most of it is waiting, so several removals in parallel
//! finish far sooner than one after another (four at once: ~3× the
//! throughput there). The remover runs that work on a few threads.
//!
//! Order and safety: a layer is deleted only after every pending layer
//! built on it (a devicemapper parent with a child still in the pool is
//! refused). Each removal is a durable record (`removals` table) until its
//! layer is gone, so a crash anywhere leaves it queued for the next start,
//! which finishes every queued removal before serving. A removal that fails
//! (a device someone still holds) is retried with a growing pause and shown
//! in `thinsnap status`; it never blocks the others.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::model::{ServiceError, ServiceResult};
use super::records::{RecordStore, Removal};
use crate::failpoint;
use crate::snapshot::{Driver, ErrorKind, LayerId};

/// The longest pause between two attempts at a failing removal.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Pending {
    parent: Option<LayerId>,
    key: String,
    not_before: Instant,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: BTreeMap<LayerId, Pending>,
    running: HashSet<LayerId>,
    stopping: bool,
}

impl Queue {
    /// A pending layer no other pending or running layer is built on,
    /// whose pause (after a failure) is over.
    fn next_runnable(&self, now: Instant) -> Option<LayerId> {
        let parents: HashSet<&LayerId> = self
            .pending
            .values()
            .filter_map(|p| p.parent.as_ref())
            .collect();
        self.pending
            .iter()
            .filter(|(l, p)| {
                !self.running.contains(*l) && p.not_before <= now && !parents.contains(l)
            })
            .map(|(l, _)| l.clone())
            .next()
    }

    /// When the earliest paused removal may run again (others wait for a
    /// removal to finish, which wakes every worker).
    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.not_before)
            .filter(|t| *t > now)
            .min()
    }

    /// Nothing runs and nothing can before a pause ends: what is left is
    /// failing, or waits for a failing child.
    fn settled(&self, now: Instant) -> bool {
        self.running.is_empty() && self.next_runnable(now).is_none()
    }
}

struct Shared {
    driver: Arc<dyn Driver>,
    records: Arc<RecordStore>,
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// The background remover; see the module doc.
pub struct Remover {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// What `thinsnap status` shows about the remover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoverStatus {
    pub pending: usize,
    pub failing: usize,
    pub last_error: Option<String>,
}

impl RemoverStatus {
    /// The rows `thinsnap status` shows (failures only when there are any).
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut out = vec![("Pending Removals".to_string(), self.pending.to_string())];
        if self.failing > 0 {
            out.push(("Failing Removals".to_string(), self.failing.to_string()));
        }
        if let Some(e) = &self.last_error {
            out.push(("Last Removal Error".to_string(), e.clone()));
        }
        out
    }
}

impl Remover {
    /// Starts `workers` threads (at least one).
    pub fn start(
        driver: Arc<dyn Driver>,
        records: Arc<RecordStore>,
        workers: usize,
    ) -> ServiceResult<Remover> {
        let shared = Arc::new(Shared {
            driver,
            records,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let mut handles = Vec::new();
        for n in 0..workers.max(1) {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("thinsnap-remove-{n}"))
                .spawn(move || work(&s))
                .map_err(|e| {
                    ServiceError::Unavailable(format!("starting a remover thread: {e}"))
                })?;
            handles.push(h);
        }
        Ok(Remover {
            shared,
            workers: Mutex::new(handles),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared)
    }

    /// Queues a removal whose record is committed.
    pub fn enqueue(&self, removal: &Removal) {
        let mut q = self.queue();
        q.pending
            .entry(removal.layer.clone())
            .or_insert_with(|| Pending {
                parent: removal.parent_layer.clone(),
                key: removal.key.clone(),
                not_before: Instant::now(),
                failures: 0,
                last_error: None,
            });
        self.shared.changed.notify_all();
    }

    /// Waits until every queued removal is done or failing (paused after a
    /// failure), or `limit` passed; returns the removals still queued.
    pub fn drain(&self, limit: Duration) -> usize {
        let deadline = Instant::now().checked_add(limit);
        let mut q = self.queue();
        loop {
            let now = Instant::now();
            if q.pending.is_empty() || q.settled(now) || deadline.is_some_and(|d| now >= d) {
                return q.pending.len();
            }
            let wait = deadline.map_or(Duration::from_secs(3600), |d| d - now);
            q = self
                .shared
                .changed
                .wait_timeout(q, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn status(&self) -> RemoverStatus {
        let q = self.queue();
        let failing: Vec<&Pending> = q.pending.values().filter(|p| p.failures > 0).collect();
        RemoverStatus {
            pending: q.pending.len(),
            failing: failing.len(),
            last_error: failing
                .iter()
                .filter_map(|p| p.last_error.as_ref().map(|e| format!("{}: {e}", p.key)))
                .next(),
        }
    }

    /// Lets the running removals finish, then stops the threads; what is
    /// still queued stays recorded for the next start.
    pub fn stop(&self) {
        self.queue().stopping = true;
        self.shared.changed.notify_all();
        let handles: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a remover thread panicked");
            }
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(shared: &Shared) {
    loop {
        let layer = {
            let mut q = lock(shared);
            loop {
                if q.stopping {
                    return;
                }
                let now = Instant::now();
                if let Some(l) = q.next_runnable(now) {
                    q.running.insert(l.clone());
                    break l;
                }
                let wait = q
                    .next_wakeup(now)
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(3600))
                    .max(Duration::from_millis(1));
                q = shared
                    .changed
                    .wait_timeout(q, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        let result = delete(shared, &layer);
        let mut q = lock(shared);
        q.running.remove(&layer);
        match result {
            Ok(()) => {
                q.pending.remove(&layer);
            }
            Err(e) => {
                if let Some(p) = q.pending.get_mut(&layer) {
                    p.failures += 1;
                    let pause = Duration::from_millis(100)
                        .saturating_mul(1 << p.failures.min(9))
                        .min(MAX_BACKOFF);
                    tracing::warn!(key = %p.key, %layer, error = %e, retry_in = ?pause,
                        "removing a snapshot's layer failed; retrying");
                    p.not_before = Instant::now() + pause;
                    p.last_error = Some(e.to_string());
                }
            }
        }
        shared.changed.notify_all();
    }
}

/// Deletes `layer` and then its removal record.
fn delete(shared: &Shared, layer: &LayerId) -> ServiceResult<()> {
    let _span = tracing::info_span!("reap", %layer).entered();
    remove_layer_if_present(shared.driver.as_ref(), layer)?;
    failpoint::hit("service.remove.removed")?;
    shared.records.write(|t| t.delete_removal(layer))
}

/// Deletes a backend layer; an absent one is fine (a repeat after a crash).
pub fn remove_layer_if_present(driver: &dyn Driver, layer: &LayerId) -> ServiceResult<()> {
    if !driver.exists(layer) {
        return Ok(());
    }
    match driver.remove(layer) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServiceError::backend(format!("removing layer {layer}"), e)),
    }
}
