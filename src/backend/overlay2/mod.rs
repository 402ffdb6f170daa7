//! overlay2: Docker's default driver. Each layer's own files live in
//! `<root>/overlay2/<id>/diff`; a layer with parents is mounted as an
//! overlay of its diff (upper) over its ancestors' diffs (lowers), named by
//! short links `l/<26 chars>` so 128 of them fit in one page of mount data.
//! See [`layout`] for the exact on-disk format, `docs/backends.md` for the
//! rules.
//!
//! Diff, changes, diff size and apply work on the diff directory alone
//! (native overlay diff), translating overlay's whiteouts (char device 0/0,
//! `trusted.overlay.opaque=y`) to and from OCI `.wh.` entries; only a diff
//! against a layer other than the recorded parent mounts both layers and
//! compares them. Mounts always pass `redirect_dir=off` and `metacopy=off`
//! (where the kernel knows them) so the diff directory holds exactly what
//! changed.
//!
//! Crash safety: a new layer is built in `.thinsnap/tmp/`, its `l/` link is
//! created (dangling), then one rename makes it appear. Remove renames the
//! layer into `.thinsnap/tmp/` first. Opening the store deletes what a crash
//! left in `.thinsnap/tmp/` and dangling links in `l/`. An apply marks the
//! layer incomplete (`.thinsnap/layers/<id>`) until its data is synced.

pub mod layout;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::shared::gate::Gate;
use super::shared::native::{self, UnionStore};
use super::shared::sidecar::{Sidecar, remove_tree};
use super::shared::{self, failpoint};
use super::shared::{mounts, overlayfs};
use crate::fsutil;
use crate::layer::WhiteoutFormat;
use crate::snapshot::{
    Change, CreateOpts, Driver, IoContext, LayerId, LayerInfo, MountSpec, Result, SnapshotError,
    Usage,
};
use layout::{
    DIFF, LINK_DIR, LINK_FILE, LOWER_FILE, MAX_LOWERS, MERGED, WORK, format_lower, link_target,
    link_target_id, new_link_name, parse_lower, valid_link_name,
};

const NAME: &str = "overlay2";

/// Failpoints between the steps of create, remove and apply.
pub const FAILPOINTS: &[&str] = &[
    "overlay2.create.after_build",
    "overlay2.create.after_link",
    "overlay2.remove.after_rename",
    "overlay2.remove.after_unlink",
    "overlay2.apply.after_mark",
    "overlay2.apply.after_sync",
];

/// The overlay2 store under `<root>/overlay2`.
pub struct Overlay2Driver {
    home: PathBuf,
    sidecar: Sidecar,
    gate: Gate,
    backing_fs: String,
    /// `index=off,redirect_dir=off,metacopy=off` as far as the kernel knows them.
    base_options: Vec<String>,
}

impl Overlay2Driver {
    /// Opens (creating) the store at `<root>/overlay2`. Refuses a kernel
    /// without overlay, a backing filesystem overlay cannot stack on, and
    /// one without d_type, saying why. Options: `overlay2.size` is refused
    /// (no project quota support), `overlay2.override_kernel_check` is
    /// accepted and ignored as in Docker 20.10.
    pub fn open(root: &Path, options: &[String]) -> Result<Overlay2Driver> {
        parse_options(options)?;
        let home = shared::make_home(root, NAME)?;
        let backing_fs = overlayfs::check_root(&home, NAME)?;
        let links = home.join(LINK_DIR);
        fsutil::ensure_dir(&links, 0o700).ctx("creating", &links)?;
        let sidecar = Sidecar::open(&home)?;
        let driver = Overlay2Driver {
            home,
            sidecar,
            gate: Gate::default(),
            backing_fs,
            base_options: mounts::overlay_base_options(),
        };
        driver.recover()?;
        Ok(driver)
    }

    /// `<root>/overlay2`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `<root>/overlay2/<id>`.
    pub fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.home.join(id.as_str())
    }

    fn diff_dir(&self, id: &LayerId) -> PathBuf {
        self.layer_dir(id).join(DIFF)
    }

    fn recover(&self) -> Result<()> {
        self.sidecar.recover(|id| self.exists(id), remove_tree)?;
        // Links whose layer is gone: an interrupted create or remove.
        let links = self.home.join(LINK_DIR);
        for entry in fs::read_dir(&links).ctx("listing", &links)? {
            let path = entry.ctx("listing", &links)?.path();
            let Ok(target) = fs::read_link(&path) else {
                continue;
            };
            if let Some(id) = link_target_id(&target)
                && !self.layer_dir(&id).is_dir()
            {
                tracing::warn!(link = %path.display(), "removing the link of a layer that does not exist");
                fs::remove_file(&path).ctx("removing", &path)?;
            }
        }
        Ok(())
    }

    /// The layer's link name (`<id>/link`).
    fn link_name(&self, id: &LayerId) -> Result<String> {
        let path = self.layer_dir(id).join(LINK_FILE);
        let name = shared::read_small(&path)?.ok_or_else(|| SnapshotError::Corrupt {
            path: path.clone(),
            detail: "the layer has no link file".into(),
        })?;
        if !valid_link_name(&name) {
            return Err(SnapshotError::Corrupt {
                path,
                detail: format!("{name:?} is not a link name"),
            });
        }
        Ok(name)
    }

    /// Link names of the layer's lowers, nearest first (empty without parent).
    fn lowers(&self, id: &LayerId) -> Result<Vec<String>> {
        let path = self.layer_dir(id).join(LOWER_FILE);
        match shared::read_small(&path)? {
            Some(text) => parse_lower(&text, &path),
            None => Ok(Vec::new()),
        }
    }

    /// The layer an `l/<link>` points at.
    fn link_owner(&self, link: &str) -> Result<LayerId> {
        let path = self.home.join(LINK_DIR).join(link);
        let target = fs::read_link(&path).ctx("reading link", &path)?;
        link_target_id(&target).ok_or_else(|| SnapshotError::Corrupt {
            path,
            detail: format!("points to {}, not ../<id>/diff", target.display()),
        })
    }

    /// Diff directories of the lowers, nearest first.
    fn lower_dirs(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        self.lowers(id)?
            .iter()
            .map(|l| Ok(self.diff_dir(&self.link_owner(l)?)))
            .collect()
    }

    fn require(&self, id: &LayerId) -> Result<()> {
        shared::require(self.exists(id), id)
    }

    fn require_complete(&self, id: &LayerId) -> Result<()> {
        shared::require_complete(self.exists(id), &self.sidecar, id)
    }

    /// Every layer directory, sorted.
    fn ids(&self) -> Result<Vec<LayerId>> {
        shared::layer_ids(&self.home, |e, id| {
            id.as_str() != LINK_DIR && e.path().is_dir()
        })
    }

    fn children(&self, id: &LayerId) -> Result<Vec<String>> {
        let link = self.link_name(id)?;
        let mut kids = Vec::new();
        for other in self.ids()? {
            if self.lowers(&other)?.first() == Some(&link) {
                kids.push(other.to_string());
            }
        }
        Ok(kids)
    }

    fn build(&self, id: &LayerId, parent: Option<&LayerId>, build: &Path) -> Result<String> {
        let lowers = match parent {
            None => None,
            Some(p) => {
                let mut lowers = vec![self.link_name(p)?];
                lowers.extend(self.lowers(p)?);
                if lowers.len() > MAX_LOWERS {
                    return Err(too_deep(id, lowers.len()));
                }
                Some(lowers)
            }
        };
        shared::make_dir(build, 0o700)?;
        shared::make_dir(&build.join(DIFF), 0o755)?;
        if let Some(lowers) = &lowers {
            shared::make_dir(&build.join(WORK), 0o700)?;
            shared::write_new_file(
                &build.join(LOWER_FILE),
                format_lower(lowers).as_bytes(),
                0o644,
            )?;
        }
        failpoint(NAME, "overlay2.create.after_build")?;
        let links = self.home.join(LINK_DIR);
        let link = loop {
            let name = new_link_name();
            match std::os::unix::fs::symlink(link_target(id), links.join(&name)) {
                Ok(()) => break name,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SnapshotError::io_path("creating link in", &links, e)),
            }
        };
        let result = (|| {
            shared::write_new_file(&build.join(LINK_FILE), link.as_bytes(), 0o644)?;
            shared::sync_path(build)?;
            shared::sync_path(&links)?;
            // A stale record (a crash between a remove's steps) must not
            // mark the new layer.
            self.sidecar.forget(id)?;
            failpoint(NAME, "overlay2.create.after_link")?;
            let target = self.layer_dir(id);
            fs::rename(build, &target).ctx("moving the new layer into", &target)?;
            shared::sync_path(&self.home)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(links.join(&link));
            return Err(e);
        }
        Ok(link)
    }

    /// Mounts the overlay of `id` on its merged dir: absolute paths when
    /// they fit in a page, else Docker's short `l/` names relative to the
    /// store from a forked helper.
    fn mount(&self, id: &LayerId, lowers: &[String], label: Option<&str>) -> Result<PathBuf> {
        let dir = self.layer_dir(id);
        let merged = dir.join(MERGED);
        let absolute = overlayfs::Dirs {
            lower: lowers
                .iter()
                .map(|l| self.home.join(LINK_DIR).join(l).display().to_string())
                .collect(),
            upper_work: Some((
                dir.join(DIFF).display().to_string(),
                dir.join(WORK).display().to_string(),
            )),
        };
        let relative = overlayfs::Dirs {
            lower: lowers.iter().map(|l| format!("{LINK_DIR}/{l}")).collect(),
            upper_work: Some((format!("{id}/{DIFF}"), format!("{id}/{WORK}"))),
        };
        overlayfs::mount(
            &self.home,
            &merged,
            &self.base_options,
            &absolute,
            &relative,
            label,
        )?;
        Ok(merged)
    }
}

fn parse_options(options: &[String]) -> Result<()> {
    for opt in options {
        let (key, _) = opt.split_once('=').unwrap_or((opt, ""));
        match key.to_ascii_lowercase().as_str() {
            "overlay2.size" => {
                return Err(SnapshotError::unsupported(
                    "overlay2.size",
                    "per-layer size limits need xfs project quotas, which thinsnap does not manage; remove the option (devicemapper limits layer size with dm.basesize)",
                ));
            }
            "overlay2.override_kernel_check" => {
                tracing::warn!("overlay2.override_kernel_check is ignored, as in Docker 20.10");
            }
            _ => {
                return Err(SnapshotError::invalid(format!(
                    "unknown option {key:?} for the overlay2 driver (it accepts overlay2.size and overlay2.override_kernel_check)"
                )));
            }
        }
    }
    Ok(())
}

fn too_deep(id: &LayerId, lowers: usize) -> SnapshotError {
    SnapshotError::invalid(format!(
        "layer {id} would have {lowers} lower layers; overlay2 allows at most {MAX_LOWERS} (Docker's limit, so the mount options fit in one page): squash the image or use fewer layers"
    ))
}

impl Driver for Overlay2Driver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        if id.as_str() == LINK_DIR {
            return Err(SnapshotError::invalid(
                "layer id \"l\" is reserved: overlay2 keeps its short links in <root>/overlay2/l",
            ));
        }
        shared::refuse_storage_opts(
            opts,
            NAME,
            "per-layer size limits need xfs project quotas, which thinsnap does not manage",
        )?;
        let _span =
            tracing::info_span!("overlay2.create", id = %id, parent = ?parent.map(|p| p.as_str()))
                .entered();
        let _guards =
            shared::begin_create(&self.gate, &self.sidecar, id, parent, |i| self.exists(i))?;
        let build = self.sidecar.tmp_path("create", id);
        let result = self.build(id, parent, &build);
        if result.is_err() {
            let _ = remove_tree(&build);
        }
        result.map(|_| ())
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _span = tracing::info_span!("overlay2.remove", id = %id).entered();
        let hold = shared::begin_remove(&self.gate, id, self.exists(id), || self.children(id))?;
        let dir = self.layer_dir(id);
        let merged = dir.join(MERGED);
        if mounts::is_mount_point(&merged) {
            // Left mounted by an earlier process.
            mounts::unmount(&merged, true).ctx("unmounting", &merged)?;
        }
        let link = self.link_name(id).ok();
        let doomed = self.sidecar.tmp_path("remove", id);
        fs::rename(&dir, &doomed).ctx("moving away", &dir)?;
        shared::sync_path(&self.home)?;
        failpoint(NAME, "overlay2.remove.after_rename")?;
        if let Some(link) = link {
            let path = self.home.join(LINK_DIR).join(link);
            if fs::read_link(&path)
                .ok()
                .and_then(|t| link_target_id(&t))
                .as_ref()
                == Some(id)
            {
                fs::remove_file(&path).ctx("removing", &path)?;
                shared::sync_path(&self.home.join(LINK_DIR))?;
            }
        }
        self.sidecar.forget(id)?;
        failpoint(NAME, "overlay2.remove.after_unlink")?;
        hold.forget_refs();
        remove_tree(&doomed)
    }

    fn get(&self, id: &LayerId, mount_label: Option<&str>) -> Result<PathBuf> {
        let hold = self.gate.hold(id);
        self.require_complete(id)?;
        let lowers = self.lowers(id)?;
        if lowers.is_empty() {
            // Docker returns the diff dir of a layer without parent.
            hold.add_ref();
            return Ok(self.diff_dir(id));
        }
        let merged = self.layer_dir(id).join(MERGED);
        if hold.refs() > 0 {
            hold.add_ref();
            return Ok(merged);
        }
        if lowers.len() > MAX_LOWERS {
            return Err(too_deep(id, lowers.len()));
        }
        match shared::make_dir(&merged, 0o700) {
            Err(e) if merged.is_dir() => drop(e),
            other => other?,
        }
        if mounts::is_mount_point(&merged) {
            tracing::warn!(id = %id, "adopting the overlay an earlier process left mounted");
        } else if let Err(e) = self.mount(id, &lowers, mount_label) {
            let _ = fs::remove_dir(&merged);
            return Err(e);
        }
        hold.add_ref();
        Ok(merged)
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        let hold = self.gate.hold(id);
        match hold.drop_ref() {
            None if self.exists(id) => {
                tracing::debug!(id = %id, "put of a layer that is not in use");
                Ok(())
            }
            None => Err(SnapshotError::not_found(id)),
            Some(left) if left > 0 => Ok(()),
            Some(_) => {
                let merged = self.layer_dir(id).join(MERGED);
                if merged.is_dir() {
                    mounts::unmount(&merged, true).ctx("unmounting", &merged)?;
                    // Removing the mount point also drops copies of the mount
                    // in other mount namespaces (as Docker does).
                    let _ = fs::remove_dir(&merged);
                }
                Ok(())
            }
        }
    }

    fn exists(&self, id: &LayerId) -> bool {
        id.as_str() != LINK_DIR && self.layer_dir(id).is_dir()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        let layers = self.ids()?.len();
        Ok(vec![
            ("Backing Filesystem".into(), self.backing_fs.clone()),
            ("Supports d_type".into(), "true".into()),
            ("Native Overlay Diff".into(), "true".into()),
            ("Using metacopy".into(), "false".into()),
            ("userxattr".into(), "false".into()),
            ("Mount Options".into(), self.base_options.join(",")),
            ("Root Dir".into(), self.home.display().to_string()),
            ("Layers".into(), layers.to_string()),
        ])
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        self.require(id)?;
        let dir = self.layer_dir(id);
        let mut map = BTreeMap::new();
        map.insert("WorkDir".into(), dir.join(WORK).display().to_string());
        map.insert("MergedDir".into(), dir.join(MERGED).display().to_string());
        map.insert("UpperDir".into(), dir.join(DIFF).display().to_string());
        let lowers = self.lower_dirs(id)?;
        if !lowers.is_empty() {
            map.insert(
                "LowerDir".into(),
                lowers
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        }
        Ok(map)
    }

    fn cleanup(&self) -> Result<()> {
        let points = mounts::unmount_all_below(&self.home).map_err(|e| {
            SnapshotError::io(format!("unmounting below {}", self.home.display()), e)
        })?;
        for p in points {
            if p.file_name().is_some_and(|n| n == MERGED) {
                let _ = fs::remove_dir(&p);
            }
        }
        self.gate.clear_refs();
        Ok(())
    }

    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        self.require(id)?;
        match self.lowers(id)?.first() {
            Some(link) => Ok(Some(self.link_owner(link)?)),
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        shared::layer_infos(self.ids()?, |id| self.parent(id), &self.sidecar, &self.gate)
    }

    fn diff(&self, id: &LayerId, parent: Option<&LayerId>, out: &mut dyn Write) -> Result<u64> {
        native::diff(self, id, parent, out)
    }

    fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        native::changes(self, id, parent)
    }

    fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        native::diff_size(self, id, parent)
    }

    fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: &mut dyn Read,
    ) -> Result<u64> {
        native::apply_diff(self, id, parent, tar)
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        self.require(id)?;
        shared::usage_of(&self.diff_dir(id), id)
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        self.require(id)?;
        self.sidecar.mark_incomplete(id, incomplete)
    }

    /// A layer without parent is a bind mount of its diff dir; others an
    /// overlay of the diff (upper) over the `l/` links of the lowers, or for
    /// a read-only view the diff as the topmost lower with no upper.
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        self.require_complete(id)?;
        let lowers = self.lowers(id)?;
        let diff = self.diff_dir(id);
        if lowers.is_empty() {
            return Ok(vec![MountSpec::bind(&diff, readonly)]);
        }
        let links: Vec<String> = lowers
            .iter()
            .map(|l| self.home.join(LINK_DIR).join(l).display().to_string())
            .collect();
        let dirs = if readonly {
            overlayfs::Dirs {
                lower: std::iter::once(diff.display().to_string())
                    .chain(links)
                    .collect(),
                upper_work: None,
            }
        } else {
            overlayfs::Dirs {
                lower: links,
                upper_work: Some((
                    diff.display().to_string(),
                    self.layer_dir(id).join(WORK).display().to_string(),
                )),
            }
        };
        Ok(vec![overlayfs::spec(&self.base_options, &dirs, readonly)])
    }
}

impl UnionStore for Overlay2Driver {
    fn changes_dir(&self, id: &LayerId) -> PathBuf {
        self.diff_dir(id)
    }

    fn format(&self) -> WhiteoutFormat {
        WhiteoutFormat::Overlay
    }

    fn lower_dirs(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        Overlay2Driver::lower_dirs(self, id)
    }

    fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn apply_failpoints(&self) -> [&'static str; 2] {
        ["overlay2.apply.after_mark", "overlay2.apply.after_sync"]
    }
}

#[cfg(test)]
mod tests;
