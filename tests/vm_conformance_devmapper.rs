//! The conformance suite on the devicemapper backend, on a real dm-thin
//! pool in the test VM. Each case gets its own loopback pool; the suite's
//! `cleanup()` after the case removes the pool and its devices.

mod common;
#[macro_use]
mod conformance;

use std::path::Path;

use conformance::{Caps, ParentRemoval};
use thinsnap::backend::devmapper::DevmapperDriver;
use thinsnap::snapshot::Driver;

fn make_devmapper(root: &Path) -> Box<dyn Driver> {
    common::require_vm();
    let opts: Vec<String> = common::DM_TEST_OPTS.iter().map(|s| s.to_string()).collect();
    Box::new(DevmapperDriver::open(root, &opts).expect("open devicemapper store"))
}

const DEVMAPPER: Caps = Caps {
    max_depth: None,
    rename_lower_dir_exdev: false,
    // Thin snapshots are independent of their origin, but thinsnap refuses
    // to remove a parent it knows children of (see docs/devicemapper.md).
    parent_removal: ParentRemoval::HasChildren,
    needs_root: true,
    child_mount_refused: None,
};

conformance_suite!(devmapper, make_devmapper, DEVMAPPER);
