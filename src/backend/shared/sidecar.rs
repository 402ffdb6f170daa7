//! What thinsnap keeps beside a Docker layout that Docker itself does not:
//! `<home>/.thinsnap/layers/<id>` (JSON: the parent where the layout does
//! not record it, and the incomplete mark of an interrupted apply) and
//! `<home>/.thinsnap/tmp/` (layers being built or removed, so the real
//! layout only ever changes by one rename).
//!
//! The dot-directory is not a valid layer id, so no listing mistakes it for
//! a layer, and Docker ignores it. A record exists only while its layer
//! exists: create writes it before the layer appears, remove deletes it
//! after the layer is gone, and [`Sidecar::recover`] drops records a crash
//! left between the two. A layer without a record (written by Docker) is a
//! complete layer whose parent the layout tells.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::snapshot::{IoContext, LayerId, Result, SnapshotError};

/// Name of the directory under a backend's home.
pub const SIDECAR_DIR: &str = ".thinsnap";

/// thinsnap's record of one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<LayerId>,
    /// Set while a tar is applied; a crash or a bad tar leaves it set.
    #[serde(default)]
    pub incomplete: bool,
}

/// The sidecar of one backend home.
#[derive(Debug, Clone)]
pub struct Sidecar {
    dir: PathBuf,
}

impl Sidecar {
    /// Opens (creating) `<home>/.thinsnap`.
    pub fn open(home: &Path) -> Result<Sidecar> {
        let dir = home.join(SIDECAR_DIR);
        for d in [dir.clone(), dir.join("tmp"), dir.join("layers")] {
            fsutil::ensure_dir(&d, 0o700).ctx("creating", &d)?;
        }
        Ok(Sidecar { dir })
    }

    /// Where layers are built and removed (same filesystem as the layout).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// A fresh path in the temp dir for `what` (`create`, `remove`) of `id`.
    pub fn tmp_path(&self, what: &str, id: &LayerId) -> PathBuf {
        self.tmp_dir()
            .join(format!("{what}-{id}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The operation and layer a temp-dir entry made by [`Self::tmp_path`]
    /// belongs to: `("remove", id)` for `remove-<id>-<32 hex>`.
    pub fn parse_tmp_name(name: &str) -> Option<(&str, LayerId)> {
        let (what, rest) = name.split_once('-')?;
        let (id, uuid) = rest.rsplit_once('-')?;
        if uuid.len() != 32 || !uuid.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some((what, LayerId::new(id).ok()?))
    }

    fn record_path(&self, id: &LayerId) -> PathBuf {
        self.dir.join("layers").join(id.as_str())
    }

    /// The record of `id`; a missing one is the default (complete, no parent).
    pub fn record(&self, id: &LayerId) -> Result<Record> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
                path: path.clone(),
                detail: format!("not a thinsnap layer record: {e}; fix or delete the file"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(SnapshotError::io_path("reading", &path, e)),
        }
    }

    /// Writes `id`'s record atomically and durably.
    pub fn store(&self, id: &LayerId, record: &Record) -> Result<()> {
        let path = self.record_path(id);
        let bytes =
            serde_json::to_vec(record).map_err(|e| SnapshotError::invalid(e.to_string()))?;
        fsutil::atomic_write(&path, &bytes, 0o600).ctx("writing", &path)
    }

    /// Deletes `id`'s record (missing is fine).
    pub fn forget(&self, id: &LayerId) -> Result<()> {
        let path = self.record_path(id);
        fsutil::remove_durable(&path).ctx("removing", &path)
    }

    /// Sets or clears the incomplete mark, keeping the rest of the record.
    pub fn mark_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        let mut rec = self.record(id)?;
        if rec.incomplete == incomplete {
            return Ok(());
        }
        rec.incomplete = incomplete;
        self.store(id, &rec)
    }

    /// After a crash: removes everything in the temp dir (with `remove`,
    /// which knows the backend's objects, e.g. btrfs subvolumes) and every
    /// record whose layer `exists` no longer says is there.
    pub fn recover(
        &self,
        exists: impl Fn(&LayerId) -> bool,
        remove: impl Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).ctx("listing", &tmp)? {
            let path = entry.ctx("listing", &tmp)?.path();
            tracing::warn!(path = %path.display(), "removing the leftover of an interrupted create or remove");
            remove(&path)?;
        }
        let layers = self.dir.join("layers");
        for entry in fs::read_dir(&layers).ctx("listing", &layers)? {
            let entry = entry.ctx("listing", &layers)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(fsutil::TEMP_PREFIX) {
                fsutil::remove_durable(&entry.path()).ctx("removing", &entry.path())?;
                continue;
            }
            if let Ok(id) = LayerId::new(&name)
                && !exists(&id)
            {
                tracing::warn!(id = %id, "dropping the record of a layer that does not exist");
                self.forget(&id)?;
            }
        }
        Ok(())
    }
}

/// Removes a file or a tree without following symlinks; missing is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).ctx("removing", path),
        Ok(_) => fs::remove_file(path).ctx("removing", path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io_path("inspecting", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> LayerId {
        LayerId::new(s).unwrap()
    }

    #[test]
    fn records_round_trip_and_recover() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        assert_eq!(s.record(&id("a")).unwrap(), Record::default());
        s.store(
            &id("a"),
            &Record {
                parent: Some(id("p")),
                incomplete: false,
            },
        )
        .unwrap();
        s.mark_incomplete(&id("a"), true).unwrap();
        let rec = s.record(&id("a")).unwrap();
        assert_eq!(rec.parent, Some(id("p")));
        assert!(rec.incomplete);
        s.store(&id("gone"), &Record::default()).unwrap();
        fs::create_dir(s.tmp_path("create", &id("x"))).unwrap();
        s.recover(|i| i.as_str() == "a", remove_tree).unwrap();
        assert!(s.record(&id("a")).unwrap().incomplete);
        assert!(!home.path().join(".thinsnap/layers/gone").exists());
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn temp_names_tell_operation_and_id() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        let p = s.tmp_path("remove", &id("a-b-init"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            Sidecar::parse_tmp_name(name),
            Some(("remove", id("a-b-init")))
        );
        assert_eq!(Sidecar::parse_tmp_name("remove-x-notauuid"), None);
        assert_eq!(Sidecar::parse_tmp_name("junk"), None);
    }

    #[test]
    fn corrupt_record_names_the_file() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        fs::write(home.path().join(".thinsnap/layers/a"), b"{nope").unwrap();
        let e = s.record(&id("a")).unwrap_err();
        assert!(e.to_string().contains(".thinsnap/layers/a"), "{e}");
    }
}
