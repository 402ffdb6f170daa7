//! The conformance suite on the aufs backend (host, root). Mainline kernels
//! have no aufs: layers without parents are served from their diff dirs and
//! everything on diff dirs works, while mounting a layer with parents is
//! refused, so the cases that need such a mount assert that refusal
//! (`Caps::child_mount_refused`) instead of passing silently.

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::aufs::AufsDriver;
use thinsnap::backend::shared::mounts::kernel_has_filesystem;
use thinsnap::snapshot::Driver;

fn make_aufs(root: &Path) -> Box<dyn Driver> {
    common::require_root();
    Box::new(AufsDriver::open(root, &[]).expect("open aufs store"))
}

fn aufs_caps() -> Caps {
    Caps {
        max_depth: None,
        // aufs renames lower directories by copying them up.
        rename_lower_dir_exdev: false,
        parent_removal: ParentRemoval::HasChildren,
        needs_root: true,
        child_mount_refused: (!kernel_has_filesystem("aufs")).then_some("aufs"),
    }
}

conformance_suite!(aufs, make_aufs, aufs_caps());
