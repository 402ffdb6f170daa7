//! The snapshotter's business logic: containerd's Snapshotter semantics on
//! top of any [`Driver`], with records in [`RecordStore`].
//!
//! Every method is blocking (the gRPC front end calls it on tokio's blocking
//! pool) and holds only the per-key locks of the keys it changes, so slow
//! backend work on one key never waits for another key.
//!
//! Crash safety: each operation that changes both a record and the backend
//! writes an intent first (a record in state `Creating` or `Removing`),
//! changes the backend, then resolves the intent. [`SnapshotService::repair`]
//! (run at every start, and by `Cleanup` for keys nobody holds) undoes an
//! unfinished create, finishes an unfinished remove, and removes service
//! layers without a record, so after a kill -9 anywhere there is no record
//! without a layer and no layer without a record.
//!
//! With background removal ([`SnapshotService::with_background_removal`],
//! what `thinsnap serve` uses) `Remove` instead moves the record into the
//! `removals` table in one transaction (the key is free at once) and the
//! [`Remover`] deletes the layer afterwards; repair finishes queued
//! removals first.
//!
//! Commit keeps the backend layer and only rewrites records (one
//! transaction): the active layer becomes the committed one in place, which
//! is what both devicemapper (the thin device becomes the origin of later
//! snapshots) and overlay2 (the upper dir becomes a lower dir) need.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::filter::Filters;
use super::locks::KeyLocks;
use super::model::{
    Kind, ServiceError, ServiceResult, SnapshotInfo, SnapshotUsage, validate_key, validate_labels,
};
use super::records::{LAYER_PREFIX, Record, RecordState, RecordStore, Removal};
use super::remover::{self, Remover, RemoverStatus};
use crate::failpoint;
use crate::snapshot::{CreateOpts, Driver, LayerId, MountSpec};

/// Crash points between the steps of the service's two-phase operations.
pub const FAILPOINTS: &[&str] = &[
    "service.prepare.recorded",
    "service.prepare.created",
    "service.remove.marked",
    "service.remove.removed",
];

/// What a repair pass did; every entry was also logged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Keys whose interrupted Prepare/View was undone.
    pub rolled_back: Vec<String>,
    /// Keys whose interrupted Remove was finished.
    pub finished_removals: Vec<String>,
    /// Service layers that had no record and were removed.
    pub orphan_layers: Vec<String>,
    /// Records whose backend layer had vanished; dropped.
    pub dropped_records: Vec<String>,
}

impl RepairReport {
    pub fn is_empty(&self) -> bool {
        self.rolled_back.is_empty()
            && self.finished_removals.is_empty()
            && self.orphan_layers.is_empty()
            && self.dropped_records.is_empty()
    }
}

/// containerd's snapshotter over one backend store.
pub struct SnapshotService {
    driver: Arc<dyn Driver>,
    records: Arc<RecordStore>,
    locks: KeyLocks,
    /// None: `Remove` deletes the layer before it returns.
    remover: Option<Remover>,
}

impl SnapshotService {
    /// Wraps `driver` and `records`; call [`repair`](Self::repair) before serving.
    pub fn new(driver: Arc<dyn Driver>, records: RecordStore) -> Self {
        SnapshotService {
            driver,
            records: Arc::new(records),
            locks: KeyLocks::default(),
            remover: None,
        }
    }

    /// Deletes removed snapshots' layers on `workers` background threads
    /// (see [`remover`]); `Remove` returns once the record is moved.
    pub fn with_background_removal(mut self, workers: usize) -> ServiceResult<Self> {
        self.remover = Some(Remover::start(
            self.driver.clone(),
            self.records.clone(),
            workers,
        )?);
        Ok(self)
    }

    /// Waits (up to `limit`) for queued removals, then stops the remover;
    /// what is left stays queued for the next start. For shutdown.
    pub fn finish_removals(&self, limit: std::time::Duration) {
        if let Some(r) = &self.remover {
            let left = r.drain(limit);
            if left > 0 {
                tracing::warn!(left, "removals left queued for the next start");
            }
            r.stop();
        }
    }

    pub fn remover_status(&self) -> Option<RemoverStatus> {
        self.remover.as_ref().map(Remover::status)
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Creates an active snapshot `key` on committed `parent` ("" = empty).
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> ServiceResult<Vec<MountSpec>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// Like `prepare`, but the snapshot is read-only and never committable.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> ServiceResult<Vec<MountSpec>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> ServiceResult<Vec<MountSpec>> {
        validate_key("key", key)?;
        validate_labels(&labels)?;
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        let _span = tracing::info_span!("create", key, kind = kind.as_str()).entered();
        let _held = self.locks.lock(&[key]);
        let now = SystemTime::now();
        let (record, parent_layer) = self.records.write(|t| {
            if let Some(existing) = t.get(key)? {
                return Err(ServiceError::AlreadyExists {
                    key: key.to_string(),
                    in_progress: existing.state != RecordState::Ready,
                });
            }
            let parent_layer = match &parent {
                None => None,
                Some(p) => {
                    let pr = t
                        .get(p)?
                        .filter(|r| r.state == RecordState::Ready)
                        .ok_or_else(|| ServiceError::NotFound {
                            key: p.to_string(),
                        })?;
                    if pr.kind != Kind::Committed {
                        return Err(ServiceError::InvalidArgument(format!(
                            "parent {p:?} is a {} snapshot; only committed snapshots can be parents",
                            pr.kind.as_str()
                        )));
                    }
                    Some(pr.layer)
                }
            };
            let record = Record {
                key: key.to_string(),
                kind,
                parent: parent.clone(),
                labels,
                created: now,
                updated: now,
                layer: t.next_layer_id()?,
                state: RecordState::Creating,
            };
            t.put(&record)?;
            if let Some(p) = &record.parent {
                t.link(p, key)?;
            }
            Ok((record, parent_layer))
        })?;
        let layer = record.layer.clone();
        tracing::debug!(%layer, "intent recorded");
        let result = (|| {
            failpoint::hit("service.prepare.recorded")?;
            let opts = CreateOpts::default();
            let created = match kind {
                Kind::View => self.driver.create(&layer, parent_layer.as_ref(), &opts),
                _ => self
                    .driver
                    .create_read_write(&layer, parent_layer.as_ref(), &opts),
            };
            created.map_err(|e| ServiceError::backend(format!("creating layer {layer}"), e))?;
            failpoint::hit("service.prepare.created")?;
            let mounts = self
                .driver
                .mounts(&layer, kind == Kind::View)
                .map_err(|e| ServiceError::backend(format!("mounts of layer {layer}"), e))?;
            self.records.write(|t| {
                let mut ready = record.clone();
                ready.state = RecordState::Ready;
                t.put(&ready)
            })?;
            Ok(mounts)
        })();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "create failed; undoing");
            if let Err(undo) = self.undo_create(&record) {
                tracing::error!(error = %undo, "undo failed; the next start repairs it");
            }
        }
        result
    }

    /// Removes a half-created snapshot: its layer (if any), then its record.
    fn undo_create(&self, record: &Record) -> ServiceResult<()> {
        self.remove_layer_if_present(&record.layer)?;
        self.forget(record)
    }

    /// Deletes `record` and its parent link.
    fn forget(&self, record: &Record) -> ServiceResult<()> {
        self.records.write(|t| {
            t.delete(&record.key)?;
            if let Some(p) = &record.parent {
                t.unlink(p, &record.key)?;
            }
            Ok(())
        })
    }

    fn remove_layer_if_present(&self, layer: &LayerId) -> ServiceResult<()> {
        remover::remove_layer_if_present(self.driver.as_ref(), layer)
    }

    /// A ready record, or NotFound.
    fn ready(&self, key: &str) -> ServiceResult<Record> {
        self.records
            .get(key)?
            .filter(|r| r.state == RecordState::Ready)
            .ok_or_else(|| ServiceError::not_found(key))
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> ServiceResult<Vec<MountSpec>> {
        let _span = tracing::debug_span!("mounts", key).entered();
        let _held = self.locks.lock(&[key]);
        let record = self.ready(key)?;
        if record.kind == Kind::Committed {
            return Err(ServiceError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; only active snapshots and views have mounts"
            )));
        }
        self.driver
            .mounts(&record.layer, record.kind == Kind::View)
            .map_err(|e| ServiceError::backend(format!("mounts of layer {}", record.layer), e))
    }

    /// Turns active `key` into committed `name` (same parent, same layer).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> ServiceResult<()> {
        validate_key("name", name)?;
        validate_key("key", key)?;
        validate_labels(&labels)?;
        let _span = tracing::info_span!("commit", key, name).entered();
        let _held = self.locks.lock(&[name, key]);
        let now = SystemTime::now();
        self.records.write(|t| {
            let active = t
                .get(key)?
                .filter(|r| r.state == RecordState::Ready)
                .ok_or_else(|| ServiceError::not_found(key))?;
            if active.kind != Kind::Active {
                return Err(ServiceError::FailedPrecondition(format!(
                    "snapshot {key:?} is a {} snapshot; only active snapshots can be committed",
                    active.kind.as_str()
                )));
            }
            if let Some(existing) = t.get(name)? {
                return Err(ServiceError::AlreadyExists {
                    key: name.to_string(),
                    in_progress: existing.state != RecordState::Ready,
                });
            }
            let committed = Record {
                key: name.to_string(),
                kind: Kind::Committed,
                parent: active.parent.clone(),
                labels,
                created: now,
                updated: now,
                layer: active.layer.clone(),
                state: RecordState::Ready,
            };
            t.delete(key)?;
            t.put(&committed)?;
            if let Some(p) = &active.parent {
                t.unlink(p, key)?;
                t.link(p, name)?;
            }
            Ok(())
        })
    }

    /// Removes a snapshot that has no children.
    pub fn remove(&self, key: &str) -> ServiceResult<()> {
        let _span = tracing::info_span!("remove", key).entered();
        let _held = self.locks.lock(&[key]);
        if let Some(remover) = &self.remover {
            let removal = self.records.write(|t| {
                let record = t
                    .get(key)?
                    .filter(|r| r.state == RecordState::Ready)
                    .ok_or_else(|| ServiceError::not_found(key))?;
                refuse_children(key, &t.children(key)?)?;
                let parent_layer = match &record.parent {
                    Some(p) => {
                        t.unlink(p, key)?;
                        t.get(p)?.map(|r| r.layer)
                    }
                    None => None,
                };
                let removal = Removal {
                    layer: record.layer,
                    parent_layer,
                    key: key.to_string(),
                };
                t.delete(key)?;
                t.put_removal(&removal)?;
                Ok(removal)
            })?;
            failpoint::hit("service.remove.marked")?;
            remover.enqueue(&removal);
            return Ok(());
        }
        let record = self.records.write(|t| {
            let mut record = t
                .get(key)?
                .filter(|r| r.state == RecordState::Ready)
                .ok_or_else(|| ServiceError::not_found(key))?;
            refuse_children(key, &t.children(key)?)?;
            record.state = RecordState::Removing;
            t.put(&record)?;
            Ok(record)
        })?;
        let result = (|| {
            failpoint::hit("service.remove.marked")?;
            self.remove_layer_if_present(&record.layer)?;
            failpoint::hit("service.remove.removed")?;
            self.forget(&record)
        })();
        if let Err(e) = &result {
            tracing::warn!(error = %e, "remove failed");
            // Still there: the snapshot goes back to service. Gone: finish.
            let settle = if self.driver.exists(&record.layer) {
                let mut ready = record.clone();
                ready.state = RecordState::Ready;
                self.records.write(|t| t.put(&ready))
            } else {
                self.forget(&record)
            };
            if let Err(s) = settle {
                tracing::error!(error = %s, "could not settle the record; the next start repairs it");
            }
        }
        result
    }

    pub fn stat(&self, key: &str) -> ServiceResult<SnapshotInfo> {
        Ok(self.ready(key)?.info())
    }

    /// Changes labels. `paths` empty: replace all labels; `labels`: the
    /// same; `labels.<k>`: set (or, when absent from `info`, delete) one
    /// label. Any other path is immutable (InvalidArgument).
    pub fn update(&self, info: &SnapshotInfo, paths: &[String]) -> ServiceResult<SnapshotInfo> {
        validate_key("name", &info.name)?;
        validate_labels(&info.labels)?;
        let key = info.name.as_str();
        let _held = self.locks.lock(&[key]);
        self.records.write(|t| {
            let mut record = t
                .get(key)?
                .filter(|r| r.state == RecordState::Ready)
                .ok_or_else(|| ServiceError::not_found(key))?;
            if paths.is_empty() {
                record.labels = info.labels.clone();
            }
            for path in paths {
                if path == "labels" {
                    record.labels = info.labels.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match info.labels.get(label) {
                        Some(v) => {
                            record.labels.insert(label.to_string(), v.clone());
                        }
                        None => {
                            record.labels.remove(label);
                        }
                    }
                } else {
                    return Err(ServiceError::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}: only labels are mutable"
                    )));
                }
            }
            validate_labels(&record.labels)?;
            record.updated = SystemTime::now();
            t.put(&record)?;
            Ok(record.info())
        })
    }

    /// Bytes and inodes the snapshot's own layer uses (parents excluded).
    pub fn usage(&self, key: &str) -> ServiceResult<SnapshotUsage> {
        let _held = self.locks.lock(&[key]);
        let record = self.ready(key)?;
        let usage = self
            .driver
            .usage(&record.layer)
            .map_err(|e| ServiceError::backend(format!("usage of layer {}", record.layer), e))?;
        Ok(SnapshotUsage {
            size: usage.bytes.0,
            inodes: usage.inodes,
        })
    }

    /// Every snapshot matching any of `filters` (containerd syntax), sorted by name.
    pub fn walk(&self, filters: &[String]) -> ServiceResult<Vec<SnapshotInfo>> {
        let filters =
            Filters::parse(filters).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        Ok(self
            .records
            .all()?
            .into_iter()
            .filter(|r| r.state == RecordState::Ready)
            .map(|r| r.info())
            .filter(|i| filters.matches(i))
            .collect())
    }

    /// containerd's `Cleanup`: settles interrupted operations on keys nobody
    /// holds and removes service layers without a record.
    pub fn cleanup(&self) -> ServiceResult<RepairReport> {
        self.repair_inner(false)
    }

    /// Start-up repair (see the module doc). Also drops ready records whose
    /// layer has vanished (someone removed it behind the service's back).
    pub fn repair(&self) -> ServiceResult<RepairReport> {
        self.repair_inner(true)
    }

    fn repair_inner(&self, drop_missing: bool) -> ServiceResult<RepairReport> {
        let _span = tracing::info_span!("repair").entered();
        let mut report = RepairReport {
            finished_removals: self.finish_queued_removals()?,
            ..Default::default()
        };
        for record in self.records.all()? {
            if record.state == RecordState::Ready {
                continue;
            }
            // An operation in flight holds its key; leave it alone.
            let Some(_held) = self.locks.try_lock(&[record.key.as_str()]) else {
                continue;
            };
            // Re-read under the lock: the operation may have just finished.
            let Some(current) = self.records.get(&record.key)? else {
                continue;
            };
            if current != record {
                continue;
            }
            self.remove_layer_if_present(&record.layer)?;
            self.forget(&record)?;
            match record.state {
                RecordState::Creating => {
                    tracing::warn!(key = %record.key, layer = %record.layer, "undid an interrupted create");
                    report.rolled_back.push(record.key);
                }
                _ => {
                    tracing::warn!(key = %record.key, layer = %record.layer, "finished an interrupted remove");
                    report.finished_removals.push(record.key);
                }
            }
        }
        if drop_missing {
            report.dropped_records = self.drop_records_without_layers()?;
        }
        report.orphan_layers = self.remove_orphan_layers()?;
        Ok(report)
    }

    /// Deletes the layers of removals queued before (a crash, a stop, or
    /// failures), children first, through the remover (a one-thread one
    /// for this call when the service removes synchronously). Returns the
    /// keys whose removal finished; failing ones stay queued.
    fn finish_queued_removals(&self) -> ServiceResult<Vec<String>> {
        let queued = self.records.removals()?;
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let temporary;
        let remover = match &self.remover {
            Some(r) => r,
            None => {
                temporary = Remover::start(self.driver.clone(), self.records.clone(), 1)?;
                &temporary
            }
        };
        for q in &queued {
            remover.enqueue(q);
        }
        remover.drain(std::time::Duration::MAX);
        let left: HashSet<LayerId> = self
            .records
            .removals()?
            .into_iter()
            .map(|q| q.layer)
            .collect();
        Ok(queued
            .into_iter()
            .filter(|q| !left.contains(&q.layer))
            .inspect(|q| tracing::warn!(key = %q.key, layer = %q.layer, "finished a queued remove"))
            .map(|q| q.key)
            .collect())
    }

    /// Ready records whose layer is gone, leaves first (a record with
    /// children stays until they are dropped or removed).
    fn drop_records_without_layers(&self) -> ServiceResult<Vec<String>> {
        let mut dropped = Vec::new();
        loop {
            let all = self.records.all()?;
            let parents: HashSet<&str> = all.iter().filter_map(|r| r.parent.as_deref()).collect();
            let victims: Vec<&Record> = all
                .iter()
                .filter(|r| r.state == RecordState::Ready)
                .filter(|r| !parents.contains(r.key.as_str()))
                .filter(|r| !self.driver.exists(&r.layer))
                .collect();
            if victims.is_empty() {
                return Ok(dropped);
            }
            for r in victims {
                tracing::error!(key = %r.key, layer = %r.layer, "snapshot's backend layer is missing; dropping its record");
                self.forget(r)?;
                dropped.push(r.key.clone());
            }
        }
    }

    /// Service layers (prefix `snap-`) that no record names, children first.
    fn remove_orphan_layers(&self) -> ServiceResult<Vec<String>> {
        let layers = self
            .driver
            .list()
            .map_err(|e| ServiceError::backend("listing layers", e))?;
        // Layers the remover still has to delete are not orphans.
        let known: HashSet<String> = self
            .records
            .all()?
            .into_iter()
            .map(|r| r.layer.to_string())
            .chain(
                self.records
                    .removals()?
                    .into_iter()
                    .map(|q| q.layer.to_string()),
            )
            .collect();
        let mut orphans: BTreeSet<LayerId> = layers
            .iter()
            .filter(|l| l.id.as_str().starts_with(LAYER_PREFIX))
            .filter(|l| !known.contains(l.id.as_str()))
            .map(|l| l.id.clone())
            .collect();
        let mut removed = Vec::new();
        while !orphans.is_empty() {
            let parents: HashSet<&LayerId> = layers
                .iter()
                .filter(|l| !removed.contains(&l.id.to_string()))
                .filter_map(|l| l.parent.as_ref())
                .collect();
            let leaves: Vec<LayerId> = orphans
                .iter()
                .filter(|o| !parents.contains(o))
                .cloned()
                .collect();
            if leaves.is_empty() {
                // Orphans under a live layer cannot happen (a child layer's
                // record names its parent's record); report, do not loop.
                tracing::error!(
                    ?orphans,
                    "orphan layers have children with records; left in place"
                );
                break;
            }
            for id in leaves {
                tracing::warn!(layer = %id, "removing a service layer without a record");
                self.remove_layer_if_present(&id)?;
                orphans.remove(&id);
                removed.push(id.to_string());
            }
        }
        Ok(removed)
    }

    /// Key/value facts for `thinsnap status` through the socket: the
    /// backend's status, then the service's counts.
    pub fn status(&self) -> ServiceResult<Vec<(String, String)>> {
        let mut out = vec![("Storage Driver".to_string(), self.driver.name().to_string())];
        out.extend(
            self.driver
                .status()
                .map_err(|e| ServiceError::backend("backend status", e))?,
        );
        let records = self.records.all()?;
        for kind in [Kind::Committed, Kind::Active, Kind::View] {
            let n = records
                .iter()
                .filter(|r| r.kind == kind && r.state == RecordState::Ready)
                .count();
            out.push((format!("Snapshots ({})", kind.as_str()), n.to_string()));
        }
        if let Some(r) = self.remover_status() {
            out.extend(r.rows());
        }
        out.push((
            "Record Store".to_string(),
            self.records.path().display().to_string(),
        ));
        Ok(out)
    }
}

/// FailedPrecondition for a snapshot that still has children.
fn refuse_children(key: &str, children: &[String]) -> ServiceResult<()> {
    if children.is_empty() {
        return Ok(());
    }
    Err(ServiceError::FailedPrecondition(format!(
        "cannot remove snapshot {key:?}: it has {} child snapshot(s) ({})",
        children.len(),
        children.join(", ")
    )))
}

#[cfg(test)]
#[path = "snapshots_tests.rs"]
mod tests;
