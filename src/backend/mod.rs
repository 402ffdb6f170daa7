//! The snapshot API's implementations and the choice between them.
//!
//! `open` is the one entry point the CLI and the service use: it picks the
//! backend (`auto` follows Docker's order, see `crate::probe::recommend`),
//! parses its options and opens (or creates) its store under the root.

use std::path::PathBuf;

use crate::snapshot::{Driver, Result, SnapshotError};

pub mod aufs;
pub mod btrfs;
pub mod overlay;
pub mod overlay2;
pub mod shared;
pub mod vfs;

/// Which store to open and how.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store root; a backend keeps its data in `<root>/<driver name>`.
    pub root: PathBuf,
    /// `auto` or a backend name.
    pub driver: String,
    /// Backend options as given (`dm.basesize=20G`, ...).
    pub storage_opts: Vec<String>,
}

/// Backend names thinsnap knows, in Docker's spelling.
pub const DRIVERS: &[&str] = &[
    "devicemapper",
    "overlay2",
    "overlay",
    "aufs",
    "vfs",
    "btrfs",
];

/// Opens the store described by `config`.
pub fn open(config: &StoreConfig) -> Result<Box<dyn Driver>> {
    let name = config.driver.as_str();
    match name {
        "aufs" => Ok(Box::new(aufs::AufsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "btrfs" => Ok(Box::new(btrfs::BtrfsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "overlay" => Ok(Box::new(overlay::OverlayDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "overlay2" => Ok(Box::new(overlay2::Overlay2Driver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "vfs" => Ok(Box::new(vfs::VfsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        other if DRIVERS.contains(&other) => Err(SnapshotError::unsupported(
            format!("the {other} backend"),
            "it is not built yet",
        )),
        other => Err(SnapshotError::invalid(format!(
            "unknown driver {other:?}; choose one of auto, {}",
            DRIVERS.join(", ")
        ))),
    }
}
