//! Layer contents in and out as OCI layer tars: computing changes between
//! trees, writing diffs with `.wh.` whiteouts, and applying tars safely
//! (no entry may escape the layer root).
//!

use std::io::{Read, Write};
use std::path::Path;

use crate::snapshot::{Change, Result};

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
/// means every path in `layer` is an addition.
pub fn changes_between(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>> {
    let _ = (layer, parent);
    todo!("layer::changes_between")
}

/// Writes an OCI layer tar of `changes`, reading contents from `root`.
pub fn write_tar(root: &Path, changes: &[Change], out: &mut dyn Write) -> Result<u64> {
    let _ = (root, changes, out);
    todo!("layer::write_tar")
}

/// Sum of the sizes of the added or modified regular files.
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64> {
    let _ = (root, changes);
    todo!("layer::changes_size")
}

/// Applies a (plain, gzip or zstd) OCI layer tar under `root`.
pub fn apply_tar(root: &Path, tar: &mut dyn Read, format: WhiteoutFormat) -> Result<u64> {
    let _ = (root, tar, format);
    todo!("layer::apply_tar")
}

/// Makes everything written under `root` durable (syncfs of its filesystem).
pub fn sync_tree(root: &Path) -> Result<()> {
    let _ = root;
    todo!("layer::sync_tree")
}
