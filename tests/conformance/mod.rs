//! The conformance suite: one set of cases, written against `&dyn Driver`,
//! run for every backend. A backend's test file supplies a constructor and
//! its [`Caps`] (what it legitimately differs in) and expands
//! [`conformance_suite!`], which makes one `#[test]` per case so a failure
//! names the case:
//!
//! ```ignore
//! mod common;
//! #[macro_use]
//! mod conformance;
//! fn make_vfs(root: &std::path::Path) -> Box<dyn thinsnap::snapshot::Driver> { ... }
//! conformance_suite!(vfs, make_vfs, conformance::Caps { .. });
//! ```
//!
//! Every case gets a fresh store root; after it, the runner calls
//! `cleanup()` and fails if any mount is left below the root. A backend that
//! needs teardown (a dm pool, loop devices) does it in its driver's `Drop`,
//! or passes a setup function (`conformance_suite!(name, make, caps, setup
//! = f)`) whose returned guard lives for the whole case (a btrfs loop
//! filesystem mounted on the root) and is dropped after the driver. If a
//! case panics, the driver is still cleaned up (`cleanup()` in `Drop`) and
//! the guard dropped, so no mount outlives the test.
#![allow(dead_code)]

pub mod cases;
pub mod tarbuild;
pub mod tree;

use std::path::{Path, PathBuf};

use thinsnap::snapshot::Driver;

/// Builds a backend on a store root (an empty directory).
pub type MakeDriver = fn(&Path) -> Box<dyn Driver>;

/// What a backend legitimately differs in.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Longest parent chain the backend can mount (overlay2: 128); `None`
    /// means no limit (checked with a chain longer than any real limit).
    pub max_depth: Option<usize>,
    /// Renaming a directory that comes from a lower layer fails with EXDEV
    /// (overlay without redirect_dir); otherwise it must succeed.
    pub rename_lower_dir_exdev: bool,
    /// What `remove` of a layer with children does.
    pub parent_removal: ParentRemoval,
    /// The backend needs root (mounts, mknod, chown); the runner insists.
    pub needs_root: bool,
    /// `Some(word)`: `get` of a layer that has a parent is refused with
    /// `Unsupported`, the message naming `word` (aufs on a kernel without
    /// aufs). Cases that need such a mount assert that refusal and check
    /// what works without it; `None`: every layer mounts.
    pub child_mount_refused: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRemoval {
    /// Refused with `HasChildren`; both layers stay.
    HasChildren,
    /// Allowed; the children keep their full contents (copying backends).
    Allowed,
}

/// Prepares a store root before the driver opens it (mounts a filesystem
/// there); the guard is dropped after the case, after the driver.
pub type Setup = fn(&Path) -> Box<dyn std::any::Any>;

/// What a case works with.
pub struct Ctx {
    driver: Option<Box<dyn Driver>>,
    pub root: PathBuf,
    pub caps: Caps,
    make: MakeDriver,
    /// Mounts below the root before the driver opened (the setup's own).
    baseline: Vec<String>,
    /// Dropped after `driver` (field order), also when the case panics.
    _env: Option<Box<dyn std::any::Any>>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take()
            && let Err(e) = d.cleanup()
        {
            eprintln!("cleanup after the case failed: {e}");
        }
    }
}

impl Ctx {
    /// The backend under test.
    pub fn d(&self) -> &dyn Driver {
        self.driver.as_deref().expect("driver is open")
    }

    /// Mounts below the store root that the backend made (the setup's own
    /// mount of the root is not counted).
    pub fn mounts_left(&self) -> Vec<String> {
        mounts_below(&self.root)
            .into_iter()
            .filter(|m| !self.baseline.contains(m))
            .collect()
    }

    /// Cleans up, drops the driver and opens the same store again.
    pub fn reopen(&mut self) {
        if let Some(d) = self.driver.take() {
            d.cleanup().expect("cleanup before reopen");
        }
        self.driver = Some((self.make)(&self.root));
    }
}

/// Runs one case on a fresh store and checks that nothing stays mounted.
pub fn run(make: MakeDriver, caps: Caps, case: fn(&mut Ctx)) {
    run_with(make, caps, None, case)
}

/// [`run`] with a setup function preparing the root first.
pub fn run_with(make: MakeDriver, caps: Caps, setup: Option<Setup>, case: fn(&mut Ctx)) {
    if caps.needs_root && !nix::unistd::geteuid().is_root() {
        panic!("this backend's conformance cases need root: run `make test-host` as root");
    }
    let dir = tempfile::tempdir().expect("temp store root");
    let root = dir.path().join("store");
    std::fs::create_dir(&root).expect("store root");
    let env = setup.map(|s| s(&root));
    let baseline = mounts_below(&root);
    let mut ctx = Ctx {
        driver: Some(make(&root)),
        root: root.clone(),
        caps,
        make,
        baseline,
        _env: env,
    };
    case(&mut ctx);
    ctx.d().cleanup().expect("cleanup after the case");
    drop(ctx);
    let left = mounts_below(&root);
    assert!(
        left.is_empty(),
        "mounts left below the store root: {left:?}"
    );
}

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// Expands to one `#[test]` per conformance case for a backend:
/// `conformance_suite!(module_name, constructor, caps_expression);`
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:path, $caps:expr) => {
        $crate::conformance_suite!($name, $make, $caps, setup = None);
    };
    ($name:ident, $make:path, $caps:expr, setup = $setup:expr) => {
        mod $name {
            use super::*;
            $crate::conformance_suite!(@cases $make, $caps, $setup;
                create_empty, create_base, create_snap, basic_api_errors,
                deep_chain_100, depth_limit, cow_isolation_of_siblings,
                deletions_and_opaque_dirs_through_diff_apply, whiteouts_in_diff,
                whiteouts_through_tars_only,
                rename_of_lower_file, rename_of_lower_dir, hardlinks,
                diff_apply_round_trip, compressed_apply, changes_against_parent, diff_size,
                container_init_layer, remove_while_mounted,
                remove_parent_with_children, get_put_refcounting,
                cleanup_leaves_no_mounts, incomplete_layer_unusable,
                hostile_tar_refused, usage_counts_data);
        }
    };
    (@cases $make:path, $caps:expr, $setup:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                conformance::run_with($make, $caps, $setup, conformance::cases::$case);
            }
        )*
    };
}
