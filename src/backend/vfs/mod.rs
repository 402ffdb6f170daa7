//! vfs: a full copy of the parent per layer, Docker's correctness reference
//! backend. Layout as Docker's: `<root>/vfs/dir/<id>` holds the layer tree.
//! thinsnap keeps each layer's parent and incomplete mark beside it in
//! `<root>/vfs/meta/<id>` (JSON, written atomically) and builds new layers
//! in `<root>/vfs/tmp/` before renaming them into place, so a crash never
//! leaves a half-copied layer under `dir/`.
//!
//! Crash recovery at open: anything in `tmp/` is removed (an unfinished
//! create, or a finished remove's leftovers), a `meta/<id>` without its
//! `dir/<id>` is removed (an interrupted remove). A `dir/<id>` without meta
//! is kept as a parentless layer: that is how a store written by Docker
//! itself looks, and nothing is ever deleted that thinsnap did not write.
//!
//! vfs mounts nothing: `get` returns the directory and counts references so
//! that `remove` of a layer in use is `Busy`, as with the other backends.

mod meta;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use meta::LayerMeta;

use crate::fsutil;
use crate::layer;
use crate::snapshot::{
    CreateOpts, Driver, ErrorKind, IoContext, LayerId, LayerInfo, MountSpec, Result, SnapshotError,
    Usage,
};
use crate::units::Bytes;

/// Failpoints between the steps of create, remove and marking.
pub const FAILPOINTS: &[&str] = &[
    "vfs.create.after_copy",
    "vfs.create.after_meta",
    "vfs.remove.after_rename",
    "vfs.remove.after_meta",
    "vfs.mark.before_write",
];

fn failpoint(name: &'static str) -> Result<()> {
    crate::failpoint::hit(name).map_err(|e| SnapshotError::other(ErrorKind::Io, "vfs", e))
}

/// In-memory state: reference counts and ids with an operation in flight.
#[derive(Default)]
struct State {
    mounts: HashMap<LayerId, u32>,
    /// Ids being created or removed right now.
    pending: HashSet<LayerId>,
    /// Layers being copied as a parent (removal must wait).
    pinned: HashMap<LayerId, u32>,
}

/// The vfs store under `<root>/vfs`.
pub struct VfsDriver {
    home: PathBuf,
    state: Mutex<State>,
}

impl VfsDriver {
    /// Opens (creating if needed) the store at `<root>/vfs` and recovers from
    /// an interrupted create or remove. vfs takes no options.
    pub fn open(root: &Path, options: &[String]) -> Result<VfsDriver> {
        if let Some(opt) = options.first() {
            let key = opt.split_once('=').map(|(k, _)| k).unwrap_or(opt);
            return Err(SnapshotError::invalid(format!(
                "unknown option {key:?} for the vfs driver (vfs takes no options)"
            )));
        }
        let home = root.join("vfs");
        for sub in ["", "dir", "meta", "tmp"] {
            let d = home.join(sub);
            fsutil::ensure_dir(&d, 0o700).ctx("creating", &d)?;
        }
        let driver = VfsDriver {
            home,
            state: Mutex::new(State::default()),
        };
        driver.recover()?;
        Ok(driver)
    }

    /// The directory holding layer `id`'s tree.
    pub fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.home.join("dir").join(id.as_str())
    }

    fn meta_path(&self, id: &LayerId) -> PathBuf {
        self.home.join("meta").join(id.as_str())
    }

    fn tmp(&self) -> PathBuf {
        self.home.join("tmp")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recover(&self) -> Result<()> {
        let tmp = self.tmp();
        for entry in fs::read_dir(&tmp).ctx("listing", &tmp)? {
            let entry = entry.ctx("listing", &tmp)?;
            tracing::warn!(path = %entry.path().display(), "removing leftover of an interrupted vfs operation");
            remove_tree(&entry.path())?;
        }
        let meta_dir = self.home.join("meta");
        for entry in fs::read_dir(&meta_dir).ctx("listing", &meta_dir)? {
            let entry = entry.ctx("listing", &meta_dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                if name.starts_with(fsutil::TEMP_PREFIX) {
                    fsutil::remove_durable(&entry.path()).ctx("removing", &entry.path())?;
                }
                continue;
            }
            let Ok(id) = LayerId::new(&name) else {
                continue;
            };
            if !self.layer_dir(&id).is_dir() {
                tracing::warn!(id = %id, "finishing an interrupted vfs remove");
                fsutil::remove_durable(&entry.path()).ctx("removing", &entry.path())?;
            }
        }
        Ok(())
    }

    fn read_meta(&self, id: &LayerId) -> Result<LayerMeta> {
        if !self.layer_dir(id).is_dir() {
            return Err(SnapshotError::not_found(id));
        }
        LayerMeta::load(&self.meta_path(id))
    }

    /// Every layer with its record, sorted by id (takes no lock).
    fn scan(&self) -> Result<Vec<(LayerId, LayerMeta)>> {
        let dir = self.home.join("dir");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
            let entry = entry.ctx("listing", &dir)?;
            let Ok(id) = LayerId::new(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let meta = LayerMeta::load(&self.meta_path(&id))?;
            out.push((id, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn children(&self, id: &LayerId) -> Result<Vec<String>> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, m)| m.parent.as_ref() == Some(id))
            .map(|(kid, _)| kid.to_string())
            .collect())
    }

    fn create_inner(&self, id: &LayerId, parent: Option<&LayerId>, build: &Path) -> Result<()> {
        fs::create_dir(build).ctx("creating", build)?;
        match parent {
            Some(p) => layer::copy_tree(&self.layer_dir(p), build)?,
            None => {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(build, fs::Permissions::from_mode(0o755))
                    .ctx("setting mode of", build)?;
            }
        }
        failpoint("vfs.create.after_copy")?;
        LayerMeta {
            parent: parent.cloned(),
            incomplete: false,
        }
        .store(&self.meta_path(id))?;
        failpoint("vfs.create.after_meta")?;
        layer::sync_tree(build)?;
        let target = self.layer_dir(id);
        fs::rename(build, &target).ctx("moving the new layer into", &target)?;
        let dir = self.home.join("dir");
        fsutil::fsync_dir(&dir).ctx("syncing", &dir)
    }
}

/// Removes a tree without following symlinks.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).ctx("removing", path),
        Ok(_) => fs::remove_file(path).ctx("removing", path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io_path("inspecting", path, e)),
    }
}

impl Driver for VfsDriver {
    fn name(&self) -> &'static str {
        "vfs"
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        if let Some(key) = opts.storage_opt.keys().next() {
            return Err(SnapshotError::unsupported(
                format!("storage option {key:?} on vfs"),
                "vfs keeps full copies and has no per-layer size limit",
            ));
        }
        let _span =
            tracing::info_span!("vfs.create", id = %id, parent = ?parent.map(|p| p.as_str()))
                .entered();
        {
            let mut st = self.state();
            if self.exists(id) || st.pending.contains(id) {
                return Err(SnapshotError::already_exists(id));
            }
            if let Some(p) = parent {
                if !self.exists(p) || st.pending.contains(p) {
                    return Err(SnapshotError::not_found(p));
                }
                if self.read_meta(p)?.incomplete {
                    return Err(SnapshotError::Incomplete { id: p.to_string() });
                }
                *st.pinned.entry(p.clone()).or_default() += 1;
            }
            st.pending.insert(id.clone());
        }
        let build = self
            .tmp()
            .join(format!("{id}.{}", uuid::Uuid::new_v4().simple()));
        let result = self.create_inner(id, parent, &build);
        if result.is_err() {
            // Undo: the layer never became visible; drop what was built.
            let _ = remove_tree(&build);
            if !self.layer_dir(id).exists() {
                let _ = fsutil::remove_durable(&self.meta_path(id));
            }
        }
        let mut st = self.state();
        st.pending.remove(id);
        if let Some(p) = parent
            && let Some(n) = st.pinned.get_mut(p)
        {
            *n -= 1;
            if *n == 0 {
                st.pinned.remove(p);
            }
        }
        result
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _span = tracing::info_span!("vfs.remove", id = %id).entered();
        {
            let mut st = self.state();
            if !self.exists(id) || st.pending.contains(id) {
                return Err(SnapshotError::not_found(id));
            }
            if let Some(n) = st.mounts.get(id).filter(|n| **n > 0) {
                return Err(SnapshotError::Busy {
                    id: id.to_string(),
                    detail: format!("it is in use ({n} outstanding get)"),
                });
            }
            if st.pinned.contains_key(id) {
                return Err(SnapshotError::Busy {
                    id: id.to_string(),
                    detail: "a child layer is being created from it".into(),
                });
            }
            let children = self.children(id)?;
            if !children.is_empty() {
                return Err(SnapshotError::HasChildren {
                    id: id.to_string(),
                    children,
                });
            }
            st.pending.insert(id.clone());
        }
        let result = (|| {
            let doomed = self
                .tmp()
                .join(format!("{id}.removing.{}", uuid::Uuid::new_v4().simple()));
            let dir = self.layer_dir(id);
            fs::rename(&dir, &doomed).ctx("moving away", &dir)?;
            let parent = self.home.join("dir");
            fsutil::fsync_dir(&parent).ctx("syncing", &parent)?;
            failpoint("vfs.remove.after_rename")?;
            fsutil::remove_durable(&self.meta_path(id)).ctx("removing", &self.meta_path(id))?;
            failpoint("vfs.remove.after_meta")?;
            remove_tree(&doomed)
        })();
        let mut st = self.state();
        st.pending.remove(id);
        st.mounts.remove(id);
        result
    }

    fn get(&self, id: &LayerId, _mount_label: Option<&str>) -> Result<PathBuf> {
        let mut st = self.state();
        if !self.exists(id) || st.pending.contains(id) {
            return Err(SnapshotError::not_found(id));
        }
        if self.read_meta(id)?.incomplete {
            return Err(SnapshotError::Incomplete { id: id.to_string() });
        }
        *st.mounts.entry(id.clone()).or_default() += 1;
        Ok(self.layer_dir(id))
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        let mut st = self.state();
        match st.mounts.get_mut(id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                st.mounts.remove(id);
            }
            None if self.exists(id) => {
                tracing::debug!(id = %id, "put of a layer that is not in use");
            }
            None => return Err(SnapshotError::not_found(id)),
        }
        Ok(())
    }

    fn exists(&self, id: &LayerId) -> bool {
        self.layer_dir(id).is_dir()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        let layers = self.list()?;
        Ok(vec![
            ("Root Dir".into(), self.home.display().to_string()),
            ("Layers".into(), layers.len().to_string()),
            (
                "Incomplete Layers".into(),
                layers.iter().filter(|l| l.incomplete).count().to_string(),
            ),
        ])
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        self.read_meta(id)?;
        let mut map = BTreeMap::new();
        map.insert("Dir".into(), self.layer_dir(id).display().to_string());
        Ok(map)
    }

    fn cleanup(&self) -> Result<()> {
        self.state().mounts.clear();
        Ok(())
    }

    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        Ok(self.read_meta(id)?.parent)
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        let layers = self.scan()?;
        let mounts = self.state().mounts.clone();
        Ok(layers
            .into_iter()
            .map(|(id, meta)| LayerInfo {
                mount_count: mounts.get(&id).copied().unwrap_or(0),
                id,
                parent: meta.parent,
                incomplete: meta.incomplete,
            })
            .collect())
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        if !self.exists(id) {
            return Err(SnapshotError::not_found(id));
        }
        let dir = self.layer_dir(id);
        let (bytes, inodes) = layer::copy::disk_usage(&dir)
            .map_err(|e| e.into_snapshot(format!("measuring layer {id}")))?;
        Ok(Usage {
            bytes: Bytes(bytes),
            inodes,
        })
    }

    /// A recursive bind mount of the layer directory; `ro` for views
    /// (containerd remounts a read-only bind, so writes get EROFS).
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        if self.state().pending.contains(id) {
            return Err(SnapshotError::not_found(id));
        }
        if self.read_meta(id)?.incomplete {
            return Err(SnapshotError::Incomplete { id: id.to_string() });
        }
        Ok(vec![MountSpec::bind(&self.layer_dir(id), readonly)])
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        let mut meta = self.read_meta(id)?;
        if meta.incomplete == incomplete {
            return Ok(());
        }
        failpoint("vfs.mark.before_write")?;
        meta.incomplete = incomplete;
        meta.store(&self.meta_path(id))
    }
}

#[cfg(test)]
mod tests;
