//! The conformance suite on the btrfs backend (host, root): every case
//! gets its own btrfs filesystem, made on a sparse file and loop-mounted on
//! the case's store root, unmounted (and the loop device released) when
//! the case ends, also when it panics.

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::btrfs::BtrfsDriver;
use thinsnap::snapshot::Driver;

fn btrfs_root(root: &Path) -> Box<dyn std::any::Any> {
    common::require_root();
    Box::new(common::LoopFs::new(&["mkfs.btrfs", "-q", "-f"], 256, root))
}

fn make_btrfs(root: &Path) -> Box<dyn Driver> {
    Box::new(BtrfsDriver::open(root, &[]).expect("open btrfs store"))
}

/// Snapshots have no depth limit and a snapshot's directories are its own,
/// so renaming one works.
const BTRFS: Caps = Caps {
    max_depth: None,
    rename_lower_dir_exdev: false,
    parent_removal: ParentRemoval::HasChildren,
    needs_root: true,
    child_mount_refused: None,
};

conformance_suite!(btrfs, make_btrfs, BTRFS, setup = Some(btrfs_root));
