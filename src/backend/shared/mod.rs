//! Pieces the directory backends (overlay2, overlay, aufs, btrfs) share:
//! [`gate`] (per-id holds, reference counts, parent pins), [`sidecar`]
//! (thinsnap's records and temp dir beside a Docker layout), [`mounts`]
//! (mountinfo, unmounting, mounting from a forked helper), [`overlayfs`]
//! (overlay checks, options and mounts for overlay2 and overlay), and small
//! file helpers that set exact modes whatever the umask.

pub mod gate;
pub mod mounts;
pub mod overlayfs;
pub mod sidecar;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::snapshot::{CreateOpts, ErrorKind, IoContext, LayerId, Result, SnapshotError};

/// Passes unless failpoint `name` is armed (see `crate::failpoint`).
pub fn failpoint(backend: &str, name: &'static str) -> Result<()> {
    crate::failpoint::hit(name)
        .map_err(|e| SnapshotError::other(ErrorKind::Io, backend.to_string(), e))
}

/// Creates directory `path` with exactly `mode` (the umask does not apply).
pub fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir(path).ctx("creating directory", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("setting mode of", path)
}

/// Writes a new file with exactly `mode` and syncs it.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx("creating", path)?;
    f.write_all(contents).ctx("writing", path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .ctx("setting mode of", path)?;
    f.sync_all().ctx("syncing", path)
}

/// Fsyncs a file or directory.
pub fn sync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .ctx("syncing", path)
}

/// Reads a small text file written by a layout (`link`, `lower`,
/// `lower-id`); `None` when it does not exist.
pub fn read_small(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| SnapshotError::Corrupt {
                path: path.to_path_buf(),
                detail: "not UTF-8 text".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SnapshotError::io_path("reading", path, e)),
    }
}

/// Refuses per-layer storage options a backend cannot honour, naming the
/// key and why.
pub fn refuse_storage_opts(opts: &CreateOpts, backend: &str, why: &str) -> Result<()> {
    match opts.storage_opt.keys().next() {
        Some(key) => Err(SnapshotError::unsupported(
            format!("storage option {key:?} on {backend}"),
            why,
        )),
        None => Ok(()),
    }
}

/// `Busy` for a layer with outstanding `get`s or children being built.
pub fn busy(id: &LayerId, refs: u32, pinned: bool) -> Result<()> {
    if refs > 0 {
        return Err(SnapshotError::Busy {
            id: id.to_string(),
            detail: format!("it is mounted or in use ({refs} outstanding get)"),
        });
    }
    if pinned {
        return Err(SnapshotError::Busy {
            id: id.to_string(),
            detail: "a child layer is being created from it".into(),
        });
    }
    Ok(())
}
