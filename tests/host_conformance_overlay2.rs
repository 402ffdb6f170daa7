//! The conformance suite on the overlay2 backend (host, root: overlay
//! mounts, whiteout device nodes). Every case gets its own temp store root;
//! the runner unmounts everything below it even when a case panics.

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::overlay2::Overlay2Driver;
use thinsnap::snapshot::Driver;

fn make_overlay2(root: &Path) -> Box<dyn Driver> {
    common::require_root();
    Box::new(Overlay2Driver::open(root, &[]).expect("open overlay2 store"))
}

/// The longest chain is 129 layers: the top's own diff over its 128 lowers
/// (Docker's limit); the 130th layer would need a 129th lower and is refused.
const OVERLAY2: Caps = Caps {
    max_depth: Some(129),
    rename_lower_dir_exdev: true,
    parent_removal: ParentRemoval::HasChildren,
    needs_root: true,
    child_mount_refused: None,
};

conformance_suite!(overlay2, make_overlay2, OVERLAY2);
