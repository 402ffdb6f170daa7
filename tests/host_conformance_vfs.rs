//! The conformance suite on the vfs backend (host, root: the cases chown
//! and mknod).

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::vfs::VfsDriver;
use thinsnap::snapshot::Driver;

fn make_vfs(root: &Path) -> Box<dyn Driver> {
    common::require_root();
    Box::new(VfsDriver::open(root, &[]).expect("open vfs store"))
}

const VFS: Caps = Caps {
    max_depth: None,
    rename_lower_dir_exdev: false,
    parent_removal: ParentRemoval::HasChildren,
    needs_root: true,
    child_mount_refused: None,
};

conformance_suite!(vfs, make_vfs, VFS);
