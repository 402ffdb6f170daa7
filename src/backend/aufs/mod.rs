//! aufs: Docker's original union driver. Layout under `<root>/aufs` (seed
//! 000):
//!
//! ```text
//! diff/<id>/     0755  the layer's own files; deletions are `.wh.<name>`
//!                      files and opaque dirs hold `.wh..wh..opq` (aufs
//!                      stores OCI whiteouts natively)
//! layers/<id>    0644  the ancestors, nearest first, one id per line
//!                      (a container lists its `-init` layer first)
//! mnt/<id>/      0755  mount point of the union
//! ```
//!
//! aufs was never in mainline Linux. The backend detects it in
//! `/proc/filesystems`; without it, mounting a layer that has parents is
//! refused with `Unsupported` saying so, while everything else works: a
//! layer without parents is served from its diff directory as Docker does,
//! and diff, changes, diff size and apply work on the diff directories
//! (`WhiteoutFormat::Aufs`).
//!
//! Crash safety: `layers/<id>` is the commit point (Docker's `Exists`).
//! Create builds `diff`, `mnt` and `layers` in `.thinsnap/tmp/create-<id>-*`
//! and renames them into place, `layers/<id>` last; remove moves
//! `layers/<id>` into `.thinsnap/tmp/remove-<id>-*` first. At open, a temp
//! entry names the interrupted operation, and its `diff/<id>` and
//! `mnt/<id>` are cleared when `layers/<id>` is absent.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::shared::gate::Gate;
use super::shared::native::{self, UnionStore};
use super::shared::sidecar::{Sidecar, remove_tree};
use super::shared::{self, failpoint, mounts};
use crate::fsutil;
use crate::layer::WhiteoutFormat;
use crate::snapshot::{
    Change, CreateOpts, Driver, IoContext, LayerId, LayerInfo, MountSpec, Result, SnapshotError,
    Usage,
};

const NAME: &str = "aufs";
pub const DIFF: &str = "diff";
pub const LAYERS: &str = "layers";
pub const MNT: &str = "mnt";

/// Failpoints between the steps of create, remove and apply.
pub const FAILPOINTS: &[&str] = &[
    "aufs.create.after_diff",
    "aufs.create.after_commit",
    "aufs.remove.after_uncommit",
    "aufs.apply.after_mark",
    "aufs.apply.after_sync",
];

/// The aufs store under `<root>/aufs`.
pub struct AufsDriver {
    home: PathBuf,
    sidecar: Sidecar,
    gate: Gate,
    /// The kernel lists aufs in /proc/filesystems.
    kernel_aufs: bool,
}

/// Formats a `layers/<id>` file: one id per line, nearest ancestor first.
pub fn format_layers(ancestors: &[LayerId]) -> String {
    ancestors.iter().map(|a| format!("{a}\n")).collect()
}

/// Parses a `layers/<id>` file.
pub fn parse_layers(text: &str, file: &Path) -> Result<Vec<LayerId>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            LayerId::new(l.trim()).map_err(|e| SnapshotError::Corrupt {
                path: file.to_path_buf(),
                detail: e.to_string(),
            })
        })
        .collect()
}

impl AufsDriver {
    /// Opens (creating) the store at `<root>/aufs`. Works without aufs in
    /// the kernel (only mounting layers with parents needs it). aufs takes
    /// no options.
    pub fn open(root: &Path, options: &[String]) -> Result<AufsDriver> {
        shared::refuse_options(options, NAME)?;
        let home = shared::make_home(root, NAME)?;
        for d in [home.join(DIFF), home.join(LAYERS), home.join(MNT)] {
            fsutil::ensure_dir(&d, 0o700).ctx("creating", &d)?;
        }
        let sidecar = Sidecar::open(&home)?;
        let driver = AufsDriver {
            home,
            sidecar,
            gate: Gate::default(),
            kernel_aufs: mounts::kernel_has_filesystem("aufs"),
        };
        driver.recover()?;
        Ok(driver)
    }

    fn path(&self, kind: &str, id: &LayerId) -> PathBuf {
        self.home.join(kind).join(id.as_str())
    }

    /// `<root>/aufs/diff/<id>`.
    pub fn diff_dir(&self, id: &LayerId) -> PathBuf {
        self.path(DIFF, id)
    }

    fn recover(&self) -> Result<()> {
        self.sidecar.recover(
            |id| self.exists(id),
            |entry| {
                let name = entry.file_name().unwrap_or_default().to_string_lossy();
                if let Some((what, id)) = Sidecar::parse_tmp_name(&name)
                    && !self.exists(&id)
                {
                    for kind in [DIFF, MNT] {
                        let p = self.path(kind, &id);
                        if what == "create" {
                            // Renamed in by the interrupted create: empty.
                            match fs::remove_dir(&p) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => {
                                    tracing::warn!(path = %p.display(), error = %e, "left in place");
                                }
                            }
                        } else if what == "remove" {
                            remove_tree(&p)?;
                        }
                    }
                }
                remove_tree(entry)
            },
        )
    }

    /// The ancestors of `id`, nearest first.
    fn ancestors(&self, id: &LayerId) -> Result<Vec<LayerId>> {
        let path = self.path(LAYERS, id);
        match shared::read_small(&path)? {
            Some(text) => parse_layers(&text, &path),
            None => Err(SnapshotError::not_found(id)),
        }
    }

    fn require_complete(&self, id: &LayerId) -> Result<()> {
        shared::require_complete(self.exists(id), &self.sidecar, id)
    }

    fn ids(&self) -> Result<Vec<LayerId>> {
        shared::layer_ids(&self.home.join(LAYERS), |_, _| true)
    }

    /// The ancestors' diff dirs, nearest first.
    fn lower_dirs(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        Ok(self
            .ancestors(id)?
            .iter()
            .map(|a| self.diff_dir(a))
            .collect())
    }

    /// Why a layer with parents cannot be mounted here.
    fn no_aufs(&self, id: &LayerId, parents: usize) -> SnapshotError {
        SnapshotError::unsupported(
            format!("mounting aufs layer {id} ({parents} parent layers)"),
            "the running kernel has no aufs filesystem (it is not listed in /proc/filesystems); aufs was never part of mainline Linux. Layers without parents, diff, apply and changes work without it; to run containers use overlay2, or a kernel with the aufs patches",
        )
    }

    /// aufs mount data: the layer's diff read-write (read-only for a
    /// view), then the ancestors' diffs read-only with whiteouts.
    fn branches(&self, id: &LayerId, ancestors: &[LayerId], readonly: bool) -> String {
        let top = if readonly { "ro+wh" } else { "rw" };
        let mut br = vec![format!("{}={top}", self.diff_dir(id).display())];
        br.extend(
            ancestors
                .iter()
                .map(|a| format!("{}=ro+wh", self.diff_dir(a).display())),
        );
        format!("br:{}", br.join(":"))
    }

    /// Mounts the union as Docker does: all branches at once when the data
    /// fits in a page, else the read-write branch first and the others
    /// appended by remounts.
    fn mount(&self, id: &LayerId, ancestors: &[LayerId], label: Option<&str>) -> Result<PathBuf> {
        let target = self.path(MNT, id);
        // aufs branch lists cannot escape their separators.
        for layer in std::iter::once(id).chain(ancestors) {
            let dir = self.diff_dir(layer).display().to_string();
            if dir.contains([':', ',', '=']) {
                return Err(SnapshotError::invalid(format!(
                    "aufs cannot mount {dir}: ':', ',' and '=' separate aufs branch options"
                )));
            }
        }
        let xino = "dio,xino=/dev/shm/aufs.xino";
        let all = mounts::with_mount_label(
            format!("{},{xino}", self.branches(id, ancestors, false)),
            label,
        );
        let result = if mounts::fits_one_page(&all) {
            mounts::mount_here("none", &target, NAME, MsFlags::empty(), &all)
        } else {
            let first = mounts::with_mount_label(
                format!("br:{}=rw,{xino}", self.diff_dir(id).display()),
                label,
            );
            mounts::mount_here("none", &target, NAME, MsFlags::empty(), &first).and_then(|()| {
                for a in ancestors {
                    let data = format!("append:{}=ro+wh", self.diff_dir(a).display());
                    if let Err(e) =
                        mounts::mount_here("none", &target, NAME, MsFlags::MS_REMOUNT, &data)
                    {
                        let _ = mounts::unmount(&target, true);
                        return Err(e);
                    }
                }
                Ok(())
            })
        };
        result.map_err(|e| {
            SnapshotError::io_path(&format!("mounting aufs layer {id} on"), &target, e)
        })?;
        Ok(target)
    }

    fn build(&self, id: &LayerId, parent: Option<&LayerId>, build: &Path) -> Result<()> {
        let ancestors = match parent {
            None => Vec::new(),
            Some(p) => {
                let mut a = vec![p.clone()];
                a.extend(self.ancestors(p)?);
                a
            }
        };
        shared::make_dir(build, 0o700)?;
        shared::make_dir(&build.join(DIFF), 0o755)?;
        shared::make_dir(&build.join(MNT), 0o755)?;
        shared::write_new_file(
            &build.join(LAYERS),
            format_layers(&ancestors).as_bytes(),
            0o644,
        )?;
        shared::sync_path(build)?;
        self.sidecar.forget(id)?;
        for kind in [DIFF, MNT] {
            let target = self.path(kind, id);
            fs::rename(build.join(kind), &target).ctx("moving the new layer into", &target)?;
            shared::sync_path(&self.home.join(kind))?;
        }
        failpoint(NAME, "aufs.create.after_diff")?;
        let target = self.path(LAYERS, id);
        fs::rename(build.join(LAYERS), &target).ctx("moving the new layer into", &target)?;
        shared::sync_path(&self.home.join(LAYERS))?;
        failpoint(NAME, "aufs.create.after_commit")?;
        fs::remove_dir(build).ctx("removing", build)
    }
}

impl Driver for AufsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        shared::refuse_storage_opts(opts, NAME, "the aufs driver has no per-layer options")?;
        let _span =
            tracing::info_span!("aufs.create", id = %id, parent = ?parent.map(|p| p.as_str()))
                .entered();
        let _guards =
            shared::begin_create(&self.gate, &self.sidecar, id, parent, |i| self.exists(i))?;
        for kind in [DIFF, MNT] {
            let p = self.path(kind, id);
            if fs::symlink_metadata(&p).is_ok() {
                return Err(SnapshotError::AlreadyExists {
                    id: id.to_string(),
                    detail: format!(
                        "{} exists without layers/{id}; it is not thinsnap's to delete: move it away",
                        p.display()
                    ),
                });
            }
        }
        let build = self.sidecar.tmp_path("create", id);
        let result = self.build(id, parent, &build);
        if result.is_err() && !self.exists(id) {
            for kind in [DIFF, MNT] {
                let _ = fs::remove_dir(self.path(kind, id));
            }
            let _ = remove_tree(&build);
        }
        result
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _span = tracing::info_span!("aufs.remove", id = %id).entered();
        let hold = shared::begin_remove(&self.gate, id, self.exists(id), || {
            Ok(self
                .ids()?
                .into_iter()
                .filter(|other| self.parent(other).ok().flatten().as_ref() == Some(id))
                .map(|c| c.to_string())
                .collect())
        })?;
        let mnt = self.path(MNT, id);
        if mounts::is_mount_point(&mnt) {
            mounts::unmount(&mnt, true).ctx("unmounting", &mnt)?;
        }
        let doomed = self.sidecar.tmp_path("remove", id);
        shared::make_dir(&doomed, 0o700)?;
        let layers = self.path(LAYERS, id);
        fs::rename(&layers, doomed.join(LAYERS)).ctx("moving away", &layers)?;
        shared::sync_path(&self.home.join(LAYERS))?;
        failpoint(NAME, "aufs.remove.after_uncommit")?;
        for kind in [DIFF, MNT] {
            let p = self.path(kind, id);
            match fs::rename(&p, doomed.join(kind)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io_path("moving away", &p, e)),
            }
        }
        self.sidecar.forget(id)?;
        hold.forget_refs();
        remove_tree(&doomed)
    }

    fn get(&self, id: &LayerId, mount_label: Option<&str>) -> Result<PathBuf> {
        let hold = self.gate.hold(id);
        self.require_complete(id)?;
        let ancestors = self.ancestors(id)?;
        if ancestors.is_empty() {
            // As Docker: a layer without parents is its diff directory.
            hold.add_ref();
            return Ok(self.diff_dir(id));
        }
        let mnt = self.path(MNT, id);
        if hold.refs() > 0 || mounts::is_mount_point(&mnt) {
            hold.add_ref();
            return Ok(mnt);
        }
        if !self.kernel_aufs {
            return Err(self.no_aufs(id, ancestors.len()));
        }
        self.mount(id, &ancestors, mount_label)?;
        hold.add_ref();
        Ok(mnt)
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        let hold = self.gate.hold(id);
        match hold.drop_ref() {
            None if self.exists(id) => Ok(()),
            None => Err(SnapshotError::not_found(id)),
            Some(left) if left > 0 => Ok(()),
            Some(_) => {
                let mnt = self.path(MNT, id);
                mounts::unmount(&mnt, true).ctx("unmounting", &mnt)
            }
        }
    }

    fn exists(&self, id: &LayerId) -> bool {
        self.path(LAYERS, id).is_file()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            ("Root Dir".into(), self.home.display().to_string()),
            (
                "Backing Filesystem".into(),
                super::shared::overlayfs::backing_fs(&self.home)?,
            ),
            ("Dirs".into(), self.ids()?.len().to_string()),
            (
                "aufs in kernel".into(),
                if self.kernel_aufs {
                    "yes".into()
                } else {
                    "no (layers with parents cannot be mounted; diff, apply and changes work)"
                        .into()
                },
            ),
        ])
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        let ancestors = self.ancestors(id)?;
        let mut map = BTreeMap::new();
        map.insert("DiffDir".into(), self.diff_dir(id).display().to_string());
        map.insert("MountDir".into(), self.path(MNT, id).display().to_string());
        map.insert("Layers".into(), ancestors.len().to_string());
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
        Ok(self.ancestors(id)?.into_iter().next())
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
        if !self.exists(id) {
            return Err(SnapshotError::not_found(id));
        }
        shared::usage_of(&self.diff_dir(id), id)
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        if !self.exists(id) {
            return Err(SnapshotError::not_found(id));
        }
        self.sidecar.mark_incomplete(id, incomplete)
    }

    /// A layer without parents is a bind mount of its diff dir; others an
    /// aufs union, refused (as `get` is) when the kernel has no aufs.
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        self.require_complete(id)?;
        let ancestors = self.ancestors(id)?;
        if ancestors.is_empty() {
            return Ok(vec![MountSpec::bind(&self.diff_dir(id), readonly)]);
        }
        if !self.kernel_aufs {
            return Err(self.no_aufs(id, ancestors.len()));
        }
        let mut options = Vec::new();
        if readonly {
            options.push("ro".to_string());
        }
        options.push(self.branches(id, &ancestors, readonly));
        options.push("dio".into());
        options.push("xino=/dev/shm/aufs.xino".into());
        Ok(vec![MountSpec {
            kind: NAME.into(),
            source: "none".into(),
            target: None,
            options,
        }])
    }
}

impl UnionStore for AufsDriver {
    fn changes_dir(&self, id: &LayerId) -> PathBuf {
        self.diff_dir(id)
    }

    fn format(&self) -> WhiteoutFormat {
        WhiteoutFormat::Aufs
    }

    fn lower_dirs(&self, id: &LayerId) -> Result<Vec<PathBuf>> {
        AufsDriver::lower_dirs(self, id)
    }

    fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn apply_failpoints(&self) -> [&'static str; 2] {
        ["aufs.apply.after_mark", "aufs.apply.after_sync"]
    }
}

#[cfg(test)]
mod tests;
