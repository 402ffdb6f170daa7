//! `/dev/mapper/<name>` nodes without udev.
//!
//! devtmpfs creates `/dev/dm-N` for every dm device, but the
//! `/dev/mapper/<name>` names come from udev's `55-dm.rules`. Where udev is
//! not running (containers, minimal VMs, early boot) thinsnap makes the node
//! itself, and never waits for a udev that is not there.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::control::DevNo;
use super::error::{DmError, DmResult};

pub const MAPPER_DIR: &str = "/dev/mapper";

/// `/dev/mapper/<name>`.
pub fn path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// `/dev/dm-<minor>`, the node devtmpfs always provides.
pub fn dm_path(devno: DevNo) -> PathBuf {
    PathBuf::from(format!("/dev/dm-{}", devno.minor))
}

/// Makes sure `/dev/mapper/<name>` refers to `devno`: keeps a correct node
/// or udev symlink, replaces a stale node left by an earlier device.
pub fn ensure(name: &str, devno: DevNo) -> DmResult<PathBuf> {
    let p = path(name);
    let want = makedev(devno.major as u64, devno.minor as u64);
    match fs::metadata(&p) {
        Ok(m) if m.file_type().is_block_device() && m.rdev() == want => return Ok(p),
        Ok(_) => {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                // A udev link pointing elsewhere: udev is handling names.
                return Ok(p);
            }
            fs::remove_file(&p).map_err(|e| DmError::io("removing stale node", &p, e))?;
        }
        Err(_) => {}
    }
    if let Err(e) = fs::create_dir_all(MAPPER_DIR) {
        return Err(DmError::io("creating", MAPPER_DIR, e));
    }
    match mknod(&p, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), want) {
        Ok(()) => Ok(p),
        Err(nix::errno::Errno::EEXIST) => Ok(p), // udev won the race
        Err(e) => Err(DmError::io("creating device node", &p, e.into())),
    }
}

/// Removes a node thinsnap made (udev's symlinks are left to udev).
pub fn remove(name: &str) {
    let p = path(name);
    if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_block_device()) {
        let _ = fs::remove_file(&p);
    }
}
