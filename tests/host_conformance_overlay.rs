//! The conformance suite on the overlay (v1) backend (host, root).

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::overlay::OverlayDriver;
use thinsnap::snapshot::Driver;

fn make_overlay(root: &Path) -> Box<dyn Driver> {
    common::require_root();
    Box::new(OverlayDriver::open(root, &[]).expect("open overlay store"))
}

/// Chains are flattened (one lower per mount), so there is no depth limit;
/// renaming a directory of the lower root fails with EXDEV (redirect_dir=off).
const OVERLAY: Caps = Caps {
    max_depth: None,
    rename_lower_dir_exdev: true,
    parent_removal: ParentRemoval::HasChildren,
    needs_root: true,
    child_mount_refused: None,
};

conformance_suite!(overlay, make_overlay, OVERLAY);
