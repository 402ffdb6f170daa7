//! overlay (v1): Docker's first overlay driver, one lower directory per
//! mount. Layout under `<root>/overlay` (seed 003):
//!
//! ```text
//! <id>/                 0700
//!   root/               0755  a layer without parent: its full tree
//! <id>/                 0700  a layer with a parent:
//!   upper/                    its changes (mode of the parent's root)
//!   work/               0700  overlay's work dir
//!   merged/             0700  mount point
//!   lower-id                  "<id of the layer whose root/ is the lower>" (no newline)
//! ```
//!
//! As in Docker, chains are flattened: a layer on a parent that has
//! `root/` uses that root as its lower; a layer on a parent that itself has
//! an `upper/` gets a full copy of that upper and the same `lower-id`.
//! Applying a tar to a fresh layer whose parent has `root/` builds a new
//! `root/`: the parent's tree hardlinked (directories recreated, files
//! shared), the tar applied on top (the applier unlinks before it writes, so
//! shared files are never written through), then `upper/ work/ merged/
//! lower-id` are removed. So image layers cost inodes, not data, and a
//! container is one overlay over its image's top root.
//!
//! Docker's layout does not keep the direct parent once chains are
//! flattened; thinsnap records it in `.thinsnap/layers/<id>` (a store
//! written by Docker falls back to `lower-id`). Diff and changes compare the
//! mounted layer with its mounted parent (Docker's naive diff).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::shared::gate::Gate;
use super::shared::sidecar::{Record, Sidecar, remove_tree};
use super::shared::{self, failpoint, mounts, overlayfs};
use crate::layer::{self, WhiteoutFormat};
use crate::snapshot::{
    CreateOpts, Driver, IoContext, LayerId, LayerInfo, MountSpec, Result, SnapshotError, Usage,
    naive,
};

const NAME: &str = "overlay";
pub const ROOT: &str = "root";
pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
pub const MERGED: &str = "merged";
pub const LOWER_ID: &str = "lower-id";

/// Failpoints between the steps of create, remove and the hardlink apply.
pub const FAILPOINTS: &[&str] = &[
    "overlay.create.after_build",
    "overlay.create.after_record",
    "overlay.remove.after_rename",
    "overlay.apply.after_link",
    "overlay.apply.after_tar",
    "overlay.apply.after_rename",
];

/// The overlay store under `<root>/overlay`.
pub struct OverlayDriver {
    home: PathBuf,
    sidecar: Sidecar,
    gate: Gate,
    backing_fs: String,
    base_options: Vec<String>,
}

/// What a layer directory holds.
enum Shape {
    /// `root/`: a full tree.
    Root,
    /// `upper/` over the root of `lower`.
    Upper { lower: LayerId },
}

impl OverlayDriver {
    /// Opens (creating) the store at `<root>/overlay`; refuses a root
    /// overlay cannot use (no overlay in the kernel, no d_type, ...). The
    /// overlay driver takes no options.
    pub fn open(root: &Path, options: &[String]) -> Result<OverlayDriver> {
        shared::refuse_options(options, NAME)?;
        let home = shared::make_home(root, NAME)?;
        let backing_fs = overlayfs::check_root(&home, NAME)?;
        let sidecar = Sidecar::open(&home)?;
        let driver = OverlayDriver {
            home,
            sidecar,
            gate: Gate::default(),
            backing_fs,
            base_options: mounts::overlay_base_options(),
        };
        driver
            .sidecar
            .recover(|id| driver.exists(id), remove_tree)?;
        Ok(driver)
    }

    /// `<root>/overlay/<id>`.
    pub fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.home.join(id.as_str())
    }

    fn shape(&self, id: &LayerId) -> Result<Shape> {
        let dir = self.layer_dir(id);
        if dir.join(ROOT).is_dir() {
            return Ok(Shape::Root);
        }
        let path = dir.join(LOWER_ID);
        let text = shared::read_small(&path)?.ok_or_else(|| SnapshotError::Corrupt {
            path: dir.clone(),
            detail: "the layer has neither root/ nor lower-id".into(),
        })?;
        let lower = LayerId::new(text.trim()).map_err(|e| SnapshotError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(Shape::Upper { lower })
    }

    fn require(&self, id: &LayerId) -> Result<()> {
        shared::require(self.exists(id), id)
    }

    fn require_complete(&self, id: &LayerId) -> Result<()> {
        shared::require_complete(self.exists(id), &self.sidecar, id)
    }

    fn ids(&self) -> Result<Vec<LayerId>> {
        shared::layer_ids(&self.home, |e, _| e.path().is_dir())
    }

    fn children(&self, id: &LayerId) -> Result<Vec<String>> {
        let mut kids = Vec::new();
        for other in self.ids()? {
            if self.parent(&other)?.as_ref() == Some(id) {
                kids.push(other.to_string());
            }
        }
        Ok(kids)
    }

    fn build(&self, id: &LayerId, parent: Option<&LayerId>, build: &Path) -> Result<()> {
        shared::make_dir(build, 0o700)?;
        match parent {
            None => shared::make_dir(&build.join(ROOT), 0o755)?,
            Some(p) => {
                let pdir = self.layer_dir(p);
                // On a parent with root/, an empty upper over that root; on
                // a parent with upper/, a copy of its changes over the same
                // lower (Docker: one lower per mount).
                let (lower, source, copy) = match self.shape(p)? {
                    Shape::Root => (p.clone(), pdir.join(ROOT), false),
                    Shape::Upper { lower } => (lower, pdir.join(UPPER), true),
                };
                let mode = fs::symlink_metadata(&source)
                    .ctx("inspecting", &source)?
                    .permissions()
                    .mode()
                    & 0o7777;
                let upper = build.join(UPPER);
                shared::make_dir(&upper, mode)?;
                if copy {
                    layer::copy_tree(&source, &upper)?;
                }
                shared::make_dir(&build.join(WORK), 0o700)?;
                shared::make_dir(&build.join(MERGED), 0o700)?;
                shared::write_new_file(&build.join(LOWER_ID), lower.as_str().as_bytes(), 0o644)?;
            }
        }
        layer::sync_tree(build)?;
        failpoint(NAME, "overlay.create.after_build")?;
        self.sidecar.store(
            id,
            &Record {
                parent: parent.cloned(),
                incomplete: false,
            },
        )?;
        failpoint(NAME, "overlay.create.after_record")?;
        let target = self.layer_dir(id);
        fs::rename(build, &target).ctx("moving the new layer into", &target)?;
        shared::sync_path(&self.home)
    }

    fn dirs(&self, id: &LayerId, lower: &LayerId, readonly: bool) -> overlayfs::Dirs {
        let dir = self.layer_dir(id);
        let lower_root = self.layer_dir(lower).join(ROOT).display().to_string();
        let upper = dir.join(UPPER).display().to_string();
        if readonly {
            overlayfs::Dirs {
                lower: vec![upper, lower_root],
                upper_work: None,
            }
        } else {
            overlayfs::Dirs {
                lower: vec![lower_root],
                upper_work: Some((upper, dir.join(WORK).display().to_string())),
            }
        }
    }

    /// Docker's fast path: a fresh layer on a parent with `root/` becomes a
    /// `root/` of its own, hardlinked from the parent's, with the tar
    /// applied. Returns `None` when the path does not apply (the layer is
    /// not fresh or its parent has no root).
    fn apply_as_root(&self, id: &LayerId, tar: &mut dyn Read) -> Result<Option<u64>> {
        let Some(parent) = self.parent(id)? else {
            return Ok(None);
        };
        let dir = self.layer_dir(id);
        let upper = dir.join(UPPER);
        let fresh = matches!(self.shape(id)?, Shape::Upper { .. })
            && fs::read_dir(&upper)
                .ctx("listing", &upper)?
                .next()
                .is_none();
        if !fresh || !matches!(self.shape(&parent)?, Shape::Root) {
            return Ok(None);
        }
        self.sidecar.mark_incomplete(id, true)?;
        let tmp = self.sidecar.tmp_path("apply", id);
        shared::make_dir(&tmp, 0o755)?;
        let result: Result<u64> = (|| {
            layer::link_tree(&self.layer_dir(&parent).join(ROOT), &tmp)?;
            failpoint(NAME, "overlay.apply.after_link")?;
            let applied = layer::apply_tar(&tmp, tar, WhiteoutFormat::Apply)?;
            layer::sync_tree(&tmp)?;
            failpoint(NAME, "overlay.apply.after_tar")?;
            let root = dir.join(ROOT);
            fs::rename(&tmp, &root).ctx("moving the applied tree into", &root)?;
            shared::sync_path(&dir)?;
            failpoint(NAME, "overlay.apply.after_rename")?;
            for name in [UPPER, WORK, MERGED, LOWER_ID] {
                remove_tree(&dir.join(name))?;
            }
            shared::sync_path(&dir)?;
            Ok(applied)
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        let applied = result?;
        self.sidecar.mark_incomplete(id, false)?;
        Ok(Some(applied))
    }
}

impl Driver for OverlayDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        shared::refuse_storage_opts(opts, NAME, "the overlay driver has no per-layer options")?;
        let _span =
            tracing::info_span!("overlay.create", id = %id, parent = ?parent.map(|p| p.as_str()))
                .entered();
        let _guards =
            shared::begin_create(&self.gate, &self.sidecar, id, parent, |i| self.exists(i))?;
        let build = self.sidecar.tmp_path("create", id);
        let result = self.build(id, parent, &build);
        if result.is_err() {
            let _ = remove_tree(&build);
            if !self.exists(id) {
                let _ = self.sidecar.forget(id);
            }
        }
        result
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _span = tracing::info_span!("overlay.remove", id = %id).entered();
        let hold = shared::begin_remove(&self.gate, id, self.exists(id), || self.children(id))?;
        let dir = self.layer_dir(id);
        let merged = dir.join(MERGED);
        if mounts::is_mount_point(&merged) {
            mounts::unmount(&merged, true).ctx("unmounting", &merged)?;
        }
        let doomed = self.sidecar.tmp_path("remove", id);
        fs::rename(&dir, &doomed).ctx("moving away", &dir)?;
        shared::sync_path(&self.home)?;
        failpoint(NAME, "overlay.remove.after_rename")?;
        self.sidecar.forget(id)?;
        hold.forget_refs();
        remove_tree(&doomed)
    }

    fn get(&self, id: &LayerId, mount_label: Option<&str>) -> Result<PathBuf> {
        let hold = self.gate.hold(id);
        self.require_complete(id)?;
        let dir = self.layer_dir(id);
        let lower = match self.shape(id)? {
            Shape::Root => {
                hold.add_ref();
                return Ok(dir.join(ROOT));
            }
            Shape::Upper { lower } => lower,
        };
        let merged = dir.join(MERGED);
        if hold.refs() > 0 || mounts::is_mount_point(&merged) {
            hold.add_ref();
            return Ok(merged);
        }
        if !merged.is_dir() {
            shared::make_dir(&merged, 0o700)?;
        }
        let relative = overlayfs::Dirs {
            lower: vec![format!("{lower}/{ROOT}")],
            upper_work: Some((format!("{id}/{UPPER}"), format!("{id}/{WORK}"))),
        };
        overlayfs::mount(
            &self.home,
            &merged,
            &self.base_options,
            &self.dirs(id, &lower, false),
            &relative,
            mount_label,
        )?;
        hold.add_ref();
        Ok(merged)
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        let hold = self.gate.hold(id);
        match hold.drop_ref() {
            None if self.exists(id) => Ok(()),
            None => Err(SnapshotError::not_found(id)),
            Some(left) if left > 0 => Ok(()),
            Some(_) => {
                let merged = self.layer_dir(id).join(MERGED);
                mounts::unmount(&merged, true).ctx("unmounting", &merged)
            }
        }
    }

    fn exists(&self, id: &LayerId) -> bool {
        self.layer_dir(id).is_dir()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            ("Backing Filesystem".into(), self.backing_fs.clone()),
            ("Supports d_type".into(), "true".into()),
            ("Root Dir".into(), self.home.display().to_string()),
            ("Layers".into(), self.ids()?.len().to_string()),
        ])
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        self.require(id)?;
        let dir = self.layer_dir(id);
        let mut map = BTreeMap::new();
        match self.shape(id)? {
            Shape::Root => {
                map.insert("RootDir".into(), dir.join(ROOT).display().to_string());
            }
            Shape::Upper { lower } => {
                let show = |p: PathBuf| p.display().to_string();
                map.insert("LowerDir".into(), show(self.layer_dir(&lower).join(ROOT)));
                map.insert("UpperDir".into(), show(dir.join(UPPER)));
                map.insert("WorkDir".into(), show(dir.join(WORK)));
                map.insert("MergedDir".into(), show(dir.join(MERGED)));
            }
        }
        Ok(map)
    }

    fn cleanup(&self) -> Result<()> {
        mounts::unmount_all_below(&self.home).map_err(|e| {
            SnapshotError::io(format!("unmounting below {}", self.home.display()), e)
        })?;
        self.gate.clear_refs();
        Ok(())
    }

    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        self.require(id)?;
        let rec = self.sidecar.record(id)?;
        if rec.parent.is_some() {
            return Ok(rec.parent);
        }
        // A layer written by Docker: lower-id is the nearest thing it records.
        match self.shape(id)? {
            Shape::Root => Ok(None),
            Shape::Upper { lower } => Ok(Some(lower)),
        }
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        shared::layer_infos(self.ids()?, |id| self.parent(id), &self.sidecar, &self.gate)
    }

    fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: &mut dyn Read,
    ) -> Result<u64> {
        let _span = tracing::info_span!("overlay.apply", id = %id).entered();
        {
            let hold = self.gate.hold(id);
            self.require_complete(id)?;
            if let Some(p) = parent
                && self.parent(id)?.as_ref() != Some(p)
            {
                return Err(shared::wrong_parent(id, self.parent(id)?, p));
            }
            if hold.refs() == 0
                && let Some(applied) = self.apply_as_root(id, tar)?
            {
                return Ok(applied);
            }
        }
        naive::apply_diff(self, id, parent, tar)
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        self.require(id)?;
        let dir = self.layer_dir(id);
        let tree = match self.shape(id)? {
            Shape::Root => dir.join(ROOT),
            Shape::Upper { .. } => dir.join(UPPER),
        };
        shared::usage_of(&tree, id)
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        self.require(id)?;
        self.sidecar.mark_incomplete(id, incomplete)
    }

    /// A layer with `root/` is a bind mount of it; others an overlay of
    /// `upper/` over the lower root, or for a view both as lowers.
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        self.require_complete(id)?;
        match self.shape(id)? {
            Shape::Root => Ok(vec![MountSpec::bind(
                &self.layer_dir(id).join(ROOT),
                readonly,
            )]),
            Shape::Upper { lower } => Ok(vec![overlayfs::spec(
                &self.base_options,
                &self.dirs(id, &lower, readonly),
                readonly,
            )]),
        }
    }
}

#[cfg(test)]
mod tests;
