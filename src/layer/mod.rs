//! Layer contents in and out as OCI layer tars: computing changes between
//! trees, writing diffs with `.wh.` whiteouts, and applying tars safely
//! (no entry may escape the layer root). `docs/layers.md` states the rules
//! as implemented.
//!
//! Modules: [`changes`] (what differs), [`writer`] (tars out), [`apply`]
//! (tars in), [`whiteout`] (names and markers), [`compress`] (format
//! detection), [`safepath`] (symlink-free resolution beneath a root),
//! [`fsmeta`] (metadata compared and carried), [`copy`] (exact tree copies).

pub mod apply;
pub mod changes;
pub mod compress;
pub mod copy;
pub mod error;
pub mod fsmeta;
pub mod guard;
pub mod safepath;
pub mod sparse;
pub mod whiteout;
pub mod writer;

use std::io::{Read, Write};
use std::path::Path;

pub use error::LayerError;

use crate::snapshot::{Change, Result, SnapshotError};

/// How a directory that receives a layer stores deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// The directory is a full copy of the parent (vfs, devicemapper,
    /// btrfs): a whiteout deletes the path, an opaque marker empties the
    /// directory.
    Apply,
    /// aufs diff directories keep `.wh.<name>` and `.wh..wh..opq` files as-is.
    Aufs,
    /// overlay upper directories: a char device 0/0 per deleted name and
    /// `trusted.overlay.opaque=y` on opaque directories.
    Overlay,
}

/// Changes that turn `parent` into `layer` (both full trees); `None` parent
/// means every path in `layer` is an addition. See [`changes`] for the rules.
pub fn changes_between(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>> {
    changes::between(layer, parent)
        .map_err(|e| e.into_snapshot(format!("comparing {} with its parent", layer.display())))
}

/// Changes recorded in a union layer directory (overlay upper dir, aufs diff
/// dir) holding only this layer's changes; `lowers` (nearest first) decide
/// `Add` versus `Modify` and which whiteouts hide something.
pub fn changes_in_layer_dir(
    dir: &Path,
    format: WhiteoutFormat,
    lowers: &[&Path],
) -> Result<Vec<Change>> {
    changes::in_layer_dir(dir, format, lowers).map_err(|e| {
        e.into_snapshot(format!(
            "reading changes of layer directory {}",
            dir.display()
        ))
    })
}

/// Writes an OCI layer tar of `changes`, reading contents from `root`.
/// Returns the bytes written.
pub fn write_tar(root: &Path, changes: &[Change], out: &mut dyn Write) -> Result<u64> {
    writer::write_tar(root, changes, out)
        .map_err(|e| e.into_snapshot(format!("writing a layer tar of {}", root.display())))
}

/// Writes an OCI layer tar of a union layer directory, translating its
/// native whiteouts to `.wh.` entries. Returns the bytes written.
pub fn write_layer_dir_tar(dir: &Path, format: WhiteoutFormat, out: &mut dyn Write) -> Result<u64> {
    writer::write_layer_dir_tar(dir, format, out)
        .map_err(|e| e.into_snapshot(format!("writing a layer tar of {}", dir.display())))
}

/// Sum of the sizes of the added or modified non-directories (Docker's
/// `ChangesSize`; hardlinked inodes counted once).
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64> {
    writer::changes_size(root, changes)
        .map_err(|e| e.into_snapshot(format!("measuring changes in {}", root.display())))
}

/// Applies a (plain, gzip or zstd) OCI layer tar under `root`, storing
/// whiteouts as `format` says. Returns the bytes of file data applied.
pub fn apply_tar(root: &Path, tar: &mut dyn Read, format: WhiteoutFormat) -> Result<u64> {
    apply::apply_tar(root, tar, format)
        .map_err(|e| e.into_snapshot(format!("applying a layer tar to {}", root.display())))
}

/// Makes everything written under `root` durable (syncfs of its filesystem).
pub fn sync_tree(root: &Path) -> Result<()> {
    let dir = std::fs::File::open(root).map_err(|e| SnapshotError::io_path("opening", root, e))?;
    nix::unistd::syncfs(&dir)
        .map_err(|e| SnapshotError::io_path("syncing the filesystem of", root, e.into()))
}

/// Copies a layer tree exactly (see [`copy`]) into the existing empty `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    copy::copy_tree(src, dst)
        .map_err(|e| e.into_snapshot(format!("copying {} to {}", src.display(), dst.display())))
}

/// Recreates the directories of `src` in the existing empty `dst` and
/// hardlinks everything else (see [`copy::link_tree`]).
pub fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    copy::link_tree(src, dst)
        .map_err(|e| e.into_snapshot(format!("linking {} into {}", src.display(), dst.display())))
}

#[cfg(test)]
mod proptest;
#[cfg(test)]
mod tests;
