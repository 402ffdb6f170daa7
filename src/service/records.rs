//! Snapshot records in redb: one embedded, transactional, crash-safe file
//! (`<root>/service/records.redb`).
//!
//! Why redb: a write transaction is atomic and durable on commit (copy-on-write
//! B-trees with a checksummed two-slot commit, fsync before returning), so a
//! record change is all-or-nothing across a kill -9 or power cut; readers see
//! a consistent snapshot without blocking writers; it is pure Rust with no C
//! library and no server. JSON files per snapshot would need our own
//! multi-file transactions (a Commit touches the key, the name and the parent's
//! child list at once); SQLite would add a C dependency for no gain.
//!
//! Tables:
//! - `snapshots`: key → JSON [`Record`] (key is containerd's, e.g.
//!   `default/3/sha256:…`; it is never used as a path);
//! - `children`: parent key → child keys (multimap), so `Remove` can refuse a
//!   parent without scanning every record;
//! - `meta`: counters (`next_layer`, the source of backend layer ids);
//! - `removals`: layer id → JSON [`Removal`]: layers of removed snapshots
//!   that the background remover has not deleted yet (the key is free
//!   already).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use redb::{
    Database, MultimapTable, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, Table, TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::model::{Kind, ServiceError, ServiceResult, SnapshotInfo};
use crate::snapshot::LayerId;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REMOVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("removals");

const NEXT_LAYER: &str = "next_layer";

/// Backend layer ids the service creates start with this, so the service
/// never mistakes a layer someone made with the CLI for one of its orphans.
pub const LAYER_PREFIX: &str = "snap-";

/// Where a record is in its life. `Creating` and `Removing` are intents:
/// written before the backend is touched, resolved after; a start that finds
/// one finishes or undoes the operation (see `SnapshotService::repair`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    Ready,
    /// The backend layer may or may not exist yet.
    Creating,
    /// The backend layer may or may not be gone already.
    Removing,
}

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// The backend layer holding the contents; survives `Commit`.
    pub layer: LayerId,
    pub state: RecordState,
}

impl Record {
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            name: self.key.clone(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        }
    }
}

/// A removed snapshot's layer still waiting to be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub layer: LayerId,
    /// The parent snapshot's layer: it is deleted only after this one.
    pub parent_layer: Option<LayerId>,
    /// The key the snapshot had (for logs).
    pub key: String,
}

/// A failure of the record store itself (file, transaction, or a record
/// that does not parse).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("snapshot record store {}: {action}: {source}", .path.display())]
    Db {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("snapshot record store {}: record {key:?} is corrupt: {source}", .path.display())]
    Corrupt {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot record store {}: layer id counter exhausted", .path.display())]
    Exhausted { path: PathBuf },
}

/// The record store; cheap to share (`&self` everywhere, redb serialises writers).
pub struct RecordStore {
    db: Database,
    path: PathBuf,
}

/// The tables of one write transaction, handed to a closure by
/// [`RecordStore::write`]. Business code composes its checks and changes
/// here; everything commits together or not at all.
pub struct Txn<'t> {
    snapshots: Table<'t, &'static str, &'static [u8]>,
    children: MultimapTable<'t, &'static str, &'static str>,
    meta: Table<'t, &'static str, u64>,
    removals: Table<'t, &'static str, &'static [u8]>,
    path: &'t Path,
}

impl RecordStore {
    /// Opens (or creates) the store at `path`. Fails with `DatabaseAlreadyOpen`
    /// when another process holds it.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let db = Database::create(path).map_err(|e| RecordError::Db {
            path: path.to_path_buf(),
            action: "opening",
            source: e.into(),
        })?;
        let store = RecordStore {
            db,
            path: path.to_path_buf(),
        };
        store.init_tables()?;
        Ok(store)
    }

    /// Creates the tables so read transactions never meet a missing one.
    fn init_tables(&self) -> Result<(), RecordError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| self.db_err("beginning a write transaction")(e.into()))?;
        let open = |e: redb::TableError| self.db_err("creating tables")(e.into());
        tx.open_table(SNAPSHOTS).map_err(open)?;
        tx.open_multimap_table(CHILDREN).map_err(open)?;
        tx.open_table(META).map_err(open)?;
        tx.open_table(REMOVALS).map_err(open)?;
        tx.commit().map_err(|e| self.db_err("committing")(e.into()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, action: &'static str) -> impl Fn(redb::Error) -> RecordError + '_ {
        move |source| RecordError::Db {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Runs `f` in one write transaction; commits (durably) only if it returns Ok.
    pub fn write<T>(&self, f: impl FnOnce(&mut Txn<'_>) -> ServiceResult<T>) -> ServiceResult<T> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| self.db_err("beginning a write transaction")(e.into()))?;
        let out = {
            let open = |e: redb::TableError| self.db_err("opening a table")(e.into());
            let mut txn = Txn {
                snapshots: tx.open_table(SNAPSHOTS).map_err(open)?,
                children: tx.open_multimap_table(CHILDREN).map_err(open)?,
                meta: tx.open_table(META).map_err(open)?,
                removals: tx.open_table(REMOVALS).map_err(open)?,
                path: &self.path,
            };
            f(&mut txn)
        };
        match out {
            Ok(v) => {
                tx.commit()
                    .map_err(|e| self.db_err("committing")(e.into()))?;
                Ok(v)
            }
            Err(e) => {
                if let Err(abort) = tx.abort() {
                    tracing::warn!(error = %abort, "aborting a record transaction failed");
                }
                Err(e)
            }
        }
    }

    /// One record, whatever its state.
    pub fn get(&self, key: &str) -> Result<Option<Record>, RecordError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("beginning a read transaction")(e.into()))?;
        let table = tx
            .open_table(SNAPSHOTS)
            .map_err(|e| self.db_err("opening a table")(e.into()))?;
        let raw = table
            .get(key)
            .map_err(|e| self.db_err("reading")(e.into()))?;
        raw.map(|v| decode(&self.path, key, v.value())).transpose()
    }

    /// Every record, sorted by key, whatever its state.
    pub fn all(&self) -> Result<Vec<Record>, RecordError> {
        self.list(SNAPSHOTS)
    }

    /// Every pending removal, by layer id.
    pub fn removals(&self) -> Result<Vec<Removal>, RecordError> {
        self.list(REMOVALS)
    }

    /// Every value of a JSON table, in key order.
    fn list<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, RecordError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| self.db_err("beginning a read transaction")(e.into()))?;
        let table = tx
            .open_table(def)
            .map_err(|e| self.db_err("opening a table")(e.into()))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.db_err("listing")(e.into()))? {
            let (k, v) = item.map_err(|e| self.db_err("listing")(e.into()))?;
            out.push(decode(&self.path, k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    raw: &[u8],
) -> Result<T, RecordError> {
    serde_json::from_slice(raw).map_err(|source| RecordError::Corrupt {
        path: path.to_path_buf(),
        key: key.to_string(),
        source,
    })
}

impl Txn<'_> {
    fn err(&self, action: &'static str) -> impl Fn(redb::StorageError) -> RecordError + '_ {
        move |e| RecordError::Db {
            path: self.path.to_path_buf(),
            action,
            source: e.into(),
        }
    }

    pub fn get(&self, key: &str) -> ServiceResult<Option<Record>> {
        let raw = self.snapshots.get(key).map_err(self.err("reading"))?;
        Ok(raw.map(|v| decode(self.path, key, v.value())).transpose()?)
    }

    /// Inserts or replaces `record` (keyed by `record.key`).
    pub fn put(&mut self, record: &Record) -> ServiceResult<()> {
        let raw = serde_json::to_vec(record).map_err(|source| RecordError::Corrupt {
            path: self.path.to_path_buf(),
            key: record.key.clone(),
            source,
        })?;
        let path = self.path;
        self.snapshots
            .insert(record.key.as_str(), raw.as_slice())
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "writing",
                source: e.into(),
            })?;
        Ok(())
    }

    pub fn delete(&mut self, key: &str) -> ServiceResult<()> {
        let path = self.path;
        self.snapshots.remove(key).map_err(|e| RecordError::Db {
            path: path.to_path_buf(),
            action: "deleting",
            source: e.into(),
        })?;
        Ok(())
    }

    /// Records `child` as built on `parent`.
    pub fn link(&mut self, parent: &str, child: &str) -> ServiceResult<()> {
        let path = self.path;
        self.children
            .insert(parent, child)
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "linking a child",
                source: e.into(),
            })?;
        Ok(())
    }

    pub fn unlink(&mut self, parent: &str, child: &str) -> ServiceResult<()> {
        let path = self.path;
        self.children
            .remove(parent, child)
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "unlinking a child",
                source: e.into(),
            })?;
        Ok(())
    }

    /// Keys of the snapshots built on `parent` (any state), sorted.
    pub fn children(&self, parent: &str) -> ServiceResult<Vec<String>> {
        let mut out = Vec::new();
        for v in self
            .children
            .get(parent)
            .map_err(self.err("reading children"))?
        {
            out.push(v.map_err(self.err("reading children"))?.value().to_string());
        }
        Ok(out)
    }

    /// Queues `removal` (its layer is deleted after the commit).
    pub fn put_removal(&mut self, removal: &Removal) -> ServiceResult<()> {
        let key = removal.layer.as_str();
        let raw = serde_json::to_vec(removal).map_err(|source| RecordError::Corrupt {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            source,
        })?;
        let path = self.path;
        self.removals
            .insert(key, raw.as_slice())
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "queueing a removal",
                source: e.into(),
            })?;
        Ok(())
    }

    /// Forgets the removal of `layer` (its layer is gone).
    pub fn delete_removal(&mut self, layer: &LayerId) -> ServiceResult<()> {
        let path = self.path;
        self.removals
            .remove(layer.as_str())
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "finishing a removal",
                source: e.into(),
            })?;
        Ok(())
    }

    /// A fresh backend layer id, never handed out before in this store.
    pub fn next_layer_id(&mut self) -> ServiceResult<LayerId> {
        let current = self
            .meta
            .get(NEXT_LAYER)
            .map_err(self.err("reading the layer counter"))?
            .map(|v| v.value())
            .unwrap_or(1);
        let next = current
            .checked_add(1)
            .ok_or_else(|| RecordError::Exhausted {
                path: self.path.to_path_buf(),
            })?;
        let path = self.path;
        self.meta
            .insert(NEXT_LAYER, next)
            .map_err(|e| RecordError::Db {
                path: path.to_path_buf(),
                action: "writing the layer counter",
                source: e.into(),
            })?;
        LayerId::new(&format!("{LAYER_PREFIX}{current}")).map_err(|e| {
            ServiceError::InvalidArgument(format!("generated layer id is invalid: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, layer: &str, parent: Option<&str>) -> Record {
        Record {
            key: key.to_string(),
            kind: Kind::Committed,
            parent: parent.map(str::to_string),
            labels: BTreeMap::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            layer: LayerId::new(layer).unwrap(),
            state: RecordState::Ready,
        }
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        {
            let store = RecordStore::open(&path).unwrap();
            store
                .write(|t| {
                    let id = t.next_layer_id()?;
                    assert_eq!(id.as_str(), "snap-1");
                    t.put(&record("default/1/sha256:aa", id.as_str(), None))?;
                    t.put(&record(
                        "default/2/x",
                        "snap-2",
                        Some("default/1/sha256:aa"),
                    ))?;
                    t.link("default/1/sha256:aa", "default/2/x")
                })
                .unwrap();
        }
        let store = RecordStore::open(&path).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].key, "default/1/sha256:aa");
        assert_eq!(all[1].parent.as_deref(), Some("default/1/sha256:aa"));
        let kids = store.write(|t| t.children("default/1/sha256:aa")).unwrap();
        assert_eq!(kids, ["default/2/x"]);
        let next = store.write(|t| t.next_layer_id()).unwrap();
        assert_eq!(next.as_str(), "snap-2", "counter survives reopen");
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("r.redb")).unwrap();
        let err = store
            .write(|t| {
                t.put(&record("k", "snap-9", None))?;
                t.next_layer_id()?;
                Err::<(), _>(ServiceError::FailedPrecondition("no".into()))
            })
            .unwrap_err();
        assert!(matches!(err, ServiceError::FailedPrecondition(_)));
        assert!(store.get("k").unwrap().is_none());
        assert_eq!(
            store.write(|t| t.next_layer_id()).unwrap().as_str(),
            "snap-1"
        );
    }

    #[test]
    fn second_open_in_another_handle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        let _first = RecordStore::open(&path).unwrap();
        let second = RecordStore::open(&path);
        assert!(second.is_err());
    }
}
