//! btrfs: one subvolume per layer, `<root>/btrfs/subvolumes/<id>` (Docker's
//! layout); a layer on a parent is a writable snapshot of the parent's
//! subvolume, so it shares all data with it until either side writes. The
//! store root must be on btrfs. Subvolumes are made and destroyed with the
//! btrfs ioctls ([`ioctl`]), no tools.
//!
//! Docker's btrfs driver records no parents; thinsnap keeps them in
//! `.thinsnap/layers/<id>` (a store written by Docker lists parentless
//! layers). Layers are plain directories: `get` returns the subvolume, diff
//! and changes compare it with its parent's (naive diff; the two are
//! snapshots of one another, which the comparison recognises by inode).
//!
//! Crash safety: a subvolume is created or snapshotted in `.thinsnap/tmp/`
//! and renamed into `subvolumes/`; remove renames it back into the temp dir
//! before destroying it. Opening the store destroys what a crash left there.

pub mod ioctl;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::shared::gate::Gate;
use super::shared::sidecar::{Record, Sidecar, remove_tree};
use super::shared::{self, failpoint};
use crate::fsutil;
use crate::layer;
use crate::snapshot::{
    CreateOpts, Driver, IoContext, LayerId, LayerInfo, MountSpec, Result, SnapshotError, Usage,
};

const NAME: &str = "btrfs";
pub const SUBVOLUMES: &str = "subvolumes";

/// Failpoints between the steps of create and remove.
pub const FAILPOINTS: &[&str] = &[
    "btrfs.create.after_subvolume",
    "btrfs.create.after_record",
    "btrfs.remove.after_rename",
];

/// The btrfs store under `<root>/btrfs`.
pub struct BtrfsDriver {
    home: PathBuf,
    sidecar: Sidecar,
    gate: Gate,
}

/// Destroys subvolume (or plain tree) `path`, nested subvolumes first.
pub fn destroy(path: &Path) -> Result<()> {
    if !ioctl::is_subvolume(path).unwrap_or(false) {
        return remove_tree(path);
    }
    let mut nested = Vec::new();
    find_nested(path, &mut nested)?;
    nested.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in nested.iter().chain(std::iter::once(&path.to_path_buf())) {
        let (dir, name) = split(p)?;
        ioctl::destroy_subvolume(dir, name).ctx("destroying btrfs subvolume", p)?;
    }
    Ok(())
}

/// Subvolumes below `dir` (not `dir` itself).
fn find_nested(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).ctx("listing", dir)? {
        let entry = entry.ctx("listing", dir)?;
        let ft = entry.file_type().ctx("inspecting", &entry.path())?;
        if !ft.is_dir() {
            continue;
        }
        let p = entry.path();
        if ioctl::is_subvolume(&p).ctx("inspecting", &p)? {
            out.push(p.clone());
        }
        find_nested(&p, out)?;
    }
    Ok(())
}

fn split(p: &Path) -> Result<(&Path, &OsStr)> {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => Ok((d, n)),
        _ => Err(SnapshotError::invalid(format!(
            "{} has no parent directory",
            p.display()
        ))),
    }
}

impl BtrfsDriver {
    /// Opens (creating) the store at `<root>/btrfs`; refuses a root that is
    /// not on btrfs. btrfs takes no options here (`btrfs.min_space` needs
    /// quota groups, which thinsnap does not manage).
    pub fn open(root: &Path, options: &[String]) -> Result<BtrfsDriver> {
        if options.iter().any(|o| o.starts_with("btrfs.min_space")) {
            return Err(SnapshotError::unsupported(
                "btrfs.min_space",
                "per-layer size limits need btrfs quota groups, which thinsnap does not manage",
            ));
        }
        shared::refuse_options(options, NAME)?;
        let home = shared::make_home(root, NAME)?;
        let fs_name = super::shared::overlayfs::backing_fs(&home)?;
        if fs_name != "btrfs" {
            return Err(SnapshotError::unsupported(
                format!("the btrfs backend on {fs_name}"),
                format!(
                    "{} is on {fs_name}, not btrfs: btrfs layers are subvolumes and snapshots, which only a btrfs filesystem has; put the store root on btrfs or choose another driver",
                    home.display()
                ),
            ));
        }
        let subvolumes = home.join(SUBVOLUMES);
        fsutil::ensure_dir(&subvolumes, 0o700).ctx("creating", &subvolumes)?;
        let sidecar = Sidecar::open(&home)?;
        let driver = BtrfsDriver {
            home,
            sidecar,
            gate: Gate::default(),
        };
        driver.sidecar.recover(|id| driver.exists(id), destroy)?;
        Ok(driver)
    }

    /// `<root>/btrfs/subvolumes/<id>`.
    pub fn subvolume(&self, id: &LayerId) -> PathBuf {
        self.home.join(SUBVOLUMES).join(id.as_str())
    }

    fn require(&self, id: &LayerId) -> Result<()> {
        shared::require(self.exists(id), id)
    }

    fn require_complete(&self, id: &LayerId) -> Result<()> {
        shared::require_complete(self.exists(id), &self.sidecar, id)
    }

    fn ids(&self) -> Result<Vec<LayerId>> {
        shared::layer_ids(&self.home.join(SUBVOLUMES), |_, _| true)
    }

    fn build(&self, id: &LayerId, parent: Option<&LayerId>, build: &Path) -> Result<()> {
        let (tmp, name) = split(build)?;
        match parent {
            None => {
                ioctl::create_subvolume(tmp, name).ctx("creating btrfs subvolume", build)?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(build, fs::Permissions::from_mode(0o755))
                    .ctx("setting mode of", build)?;
            }
            Some(p) => {
                let source = self.subvolume(p);
                ioctl::snapshot(&source, tmp, name, false).map_err(|e| {
                    SnapshotError::io(
                        format!(
                            "snapshotting btrfs subvolume {} as {}",
                            source.display(),
                            build.display()
                        ),
                        e,
                    )
                })?;
            }
        }
        layer::sync_tree(build)?;
        failpoint(NAME, "btrfs.create.after_subvolume")?;
        self.sidecar.store(
            id,
            &Record {
                parent: parent.cloned(),
                incomplete: false,
            },
        )?;
        failpoint(NAME, "btrfs.create.after_record")?;
        let target = self.subvolume(id);
        fs::rename(build, &target).ctx("moving the new subvolume into", &target)?;
        shared::sync_path(&self.home.join(SUBVOLUMES))
    }
}

impl Driver for BtrfsDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        shared::refuse_storage_opts(
            opts,
            NAME,
            "per-layer size limits need btrfs quota groups, which thinsnap does not manage",
        )?;
        let _span =
            tracing::info_span!("btrfs.create", id = %id, parent = ?parent.map(|p| p.as_str()))
                .entered();
        let _guards =
            shared::begin_create(&self.gate, &self.sidecar, id, parent, |i| self.exists(i))?;
        let build = self.sidecar.tmp_path("create", id);
        let result = self.build(id, parent, &build);
        if result.is_err() {
            if let Err(e) = destroy(&build) {
                tracing::warn!(path = %build.display(), error = %e, "could not destroy a half-built subvolume; the next open will");
            }
            if !self.exists(id) {
                let _ = self.sidecar.forget(id);
            }
        }
        result
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        let _span = tracing::info_span!("btrfs.remove", id = %id).entered();
        let hold = shared::begin_remove(&self.gate, id, self.exists(id), || {
            let mut children = Vec::new();
            for other in self.ids()? {
                if self.sidecar.record(&other)?.parent.as_ref() == Some(id) {
                    children.push(other.to_string());
                }
            }
            Ok(children)
        })?;
        let sub = self.subvolume(id);
        let doomed = self.sidecar.tmp_path("remove", id);
        fs::rename(&sub, &doomed).ctx("moving away", &sub)?;
        shared::sync_path(&self.home.join(SUBVOLUMES))?;
        failpoint(NAME, "btrfs.remove.after_rename")?;
        self.sidecar.forget(id)?;
        hold.forget_refs();
        destroy(&doomed)
    }

    fn get(&self, id: &LayerId, _mount_label: Option<&str>) -> Result<PathBuf> {
        let hold = self.gate.hold(id);
        self.require_complete(id)?;
        hold.add_ref();
        Ok(self.subvolume(id))
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        let hold = self.gate.hold(id);
        match hold.drop_ref() {
            None if !self.exists(id) => Err(SnapshotError::not_found(id)),
            _ => Ok(()),
        }
    }

    fn exists(&self, id: &LayerId) -> bool {
        self.subvolume(id).is_dir()
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        Ok(vec![
            ("Backing Filesystem".into(), "btrfs".into()),
            ("Root Dir".into(), self.home.display().to_string()),
            ("Subvolumes".into(), self.ids()?.len().to_string()),
            (
                "Build Version".into(),
                "btrfs ioctls (no btrfs-progs)".into(),
            ),
        ])
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        self.require(id)?;
        let mut map = BTreeMap::new();
        map.insert("Subvolume".into(), self.subvolume(id).display().to_string());
        Ok(map)
    }

    fn cleanup(&self) -> Result<()> {
        // Nothing is mounted: layers are subvolumes in place.
        self.gate.clear_refs();
        Ok(())
    }

    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        self.require(id)?;
        Ok(self.sidecar.record(id)?.parent)
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        shared::layer_infos(self.ids()?, |id| self.parent(id), &self.sidecar, &self.gate)
    }

    /// Bytes and inodes in the subvolume; extents shared with the parent
    /// snapshot are counted too (exclusive usage needs quota groups).
    fn usage(&self, id: &LayerId) -> Result<Usage> {
        self.require(id)?;
        shared::usage_of(&self.subvolume(id), id)
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        self.require(id)?;
        self.sidecar.mark_incomplete(id, incomplete)
    }

    /// A bind mount of the subvolume, read-only for a view.
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        self.require_complete(id)?;
        Ok(vec![MountSpec::bind(&self.subvolume(id), readonly)])
    }
}
