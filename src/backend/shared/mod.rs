//! Pieces the directory backends (overlay2, overlay, aufs, btrfs) share:
//! [`gate`] (per-id holds, reference counts, parent pins), [`sidecar`]
//! (thinsnap's records and temp dir beside a Docker layout), [`mounts`]
//! (mountinfo, unmounting, mounting from a forked helper), [`overlayfs`]
//! (overlay checks, options and mounts for overlay2 and overlay), and small
//! file helpers that set exact modes whatever the umask.

pub mod gate;
pub mod mounts;
pub mod native;
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

/// Creates `<root>/<driver>` (0700) if needed and returns it canonical:
/// mount options, mountinfo comparisons and paths relative to the store
/// all need the real absolute path, whatever `--root` looked like.
pub fn make_home(root: &Path, driver: &str) -> Result<std::path::PathBuf> {
    let home = root.join(driver);
    crate::fsutil::ensure_dir(&home, 0o700).ctx("creating", &home)?;
    fs::canonicalize(&home).ctx("resolving", &home)
}

/// Refuses backend options for a driver that takes none, naming the key.
pub fn refuse_options(options: &[String], backend: &str) -> Result<()> {
    match options.first() {
        Some(opt) => {
            let key = opt.split_once('=').map(|(k, _)| k).unwrap_or(opt);
            Err(SnapshotError::invalid(format!(
                "unknown option {key:?} for the {backend} driver (it takes no options)"
            )))
        }
        None => Ok(()),
    }
}

/// The layer ids named by entries of `dir` (sorted), skipping names that
/// are not valid ids and entries `keep` rejects.
pub fn layer_ids(
    dir: &Path,
    keep: impl Fn(&fs::DirEntry, &LayerId) -> bool,
) -> Result<Vec<LayerId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).ctx("listing", dir)? {
        let entry = entry.ctx("listing", dir)?;
        if let Ok(id) = LayerId::new(&entry.file_name().to_string_lossy())
            && keep(&entry, &id)
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// `NotFound` unless the layer exists.
pub fn require(exists: bool, id: &LayerId) -> Result<()> {
    if exists {
        Ok(())
    } else {
        Err(SnapshotError::not_found(id))
    }
}

/// `NotFound` unless the layer exists, `Incomplete` if its record says so.
pub fn require_complete(exists: bool, sidecar: &sidecar::Sidecar, id: &LayerId) -> Result<()> {
    if !exists {
        return Err(SnapshotError::not_found(id));
    }
    if sidecar.record(id)?.incomplete {
        return Err(SnapshotError::Incomplete { id: id.to_string() });
    }
    Ok(())
}

/// Space used by the tree at `dir`, the layer's own data.
pub fn usage_of(dir: &Path, id: &LayerId) -> Result<crate::snapshot::Usage> {
    let (bytes, inodes) = crate::layer::copy::disk_usage(dir)
        .map_err(|e| e.into_snapshot(format!("measuring layer {id}")))?;
    Ok(crate::snapshot::Usage {
        bytes: crate::units::Bytes(bytes),
        inodes,
    })
}

/// `apply_diff` given a parent that is not the layer's own.
pub fn wrong_parent(id: &LayerId, recorded: Option<LayerId>, given: &LayerId) -> SnapshotError {
    SnapshotError::invalid(format!(
        "layer {id} was created on {}, not on {given}",
        recorded
            .map(|r| r.to_string())
            .unwrap_or_else(|| "nothing".into())
    ))
}

/// `list()` of a directory backend: every id with its parent, reference
/// count and incomplete mark.
pub fn layer_infos(
    ids: Vec<LayerId>,
    parent: impl Fn(&LayerId) -> Result<Option<LayerId>>,
    sidecar: &sidecar::Sidecar,
    gate: &gate::Gate,
) -> Result<Vec<crate::snapshot::LayerInfo>> {
    let refs = gate.all_refs();
    ids.into_iter()
        .map(|id| {
            Ok(crate::snapshot::LayerInfo {
                parent: parent(&id)?,
                mount_count: refs.get(&id).copied().unwrap_or(0),
                incomplete: sidecar.record(&id)?.incomplete,
                id,
            })
        })
        .collect()
}

/// The start of every create: holds `id`, refuses an existing one, pins
/// the parent (so it cannot be removed meanwhile) and refuses a missing or
/// incomplete parent. Keep the returned guards for the whole create.
pub fn begin_create<'g>(
    gate: &'g gate::Gate,
    sidecar: &sidecar::Sidecar,
    id: &LayerId,
    parent: Option<&LayerId>,
    exists: impl Fn(&LayerId) -> bool,
) -> Result<(gate::Hold<'g>, Option<gate::Pin<'g>>)> {
    let hold = gate.hold(id);
    if exists(id) {
        return Err(SnapshotError::already_exists(id));
    }
    let pin = parent.map(|p| gate.pin(p));
    if let Some(p) = parent {
        require_complete(exists(p), sidecar, p)?;
    }
    Ok((hold, pin))
}

/// The start of every remove: holds `id` and refuses a missing layer, one
/// in use (`Busy`) or one with children (`HasChildren`, listing them).
pub fn begin_remove<'g>(
    gate: &'g gate::Gate,
    id: &LayerId,
    exists: bool,
    children: impl FnOnce() -> Result<Vec<String>>,
) -> Result<gate::Hold<'g>> {
    let hold = gate.hold(id);
    if !exists {
        return Err(SnapshotError::not_found(id));
    }
    busy(id, hold.refs(), gate.pinned(id))?;
    let children = children()?;
    if !children.is_empty() {
        return Err(SnapshotError::HasChildren {
            id: id.to_string(),
            children,
        });
    }
    Ok(hold)
}

/// A plain tar of regular files, for the backends' unit tests.
#[cfg(test)]
pub fn test_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).expect("in-memory tar");
    }
    b.into_inner().expect("in-memory tar")
}
