//! Block-device ioctls: size and discard.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::{DmError, DmResult};
use crate::units::Bytes;

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// The device's size in bytes (BLKGETSIZE64).
pub fn size(dev: &Path) -> DmResult<Bytes> {
    let f = File::open(dev).map_err(|e| DmError::io("opening", dev, e))?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    unsafe { blk_getsize64(f.as_raw_fd(), &mut size) }
        .map_err(|e| DmError::io("BLKGETSIZE64 on", dev, e.into()))?;
    Ok(Bytes(size))
}

/// Discards the whole device (BLKDISCARD), returning its blocks to the
/// pool and, on loopback pools, punching holes in the data file.
pub fn discard_all(dev: &Path) -> DmResult<()> {
    let len = size(dev)?;
    let f = File::options()
        .write(true)
        .open(dev)
        .map_err(|e| DmError::io("opening", dev, e))?;
    let range = [0u64, len.0];
    // SAFETY: BLKDISCARD reads a [start, len] pair of u64.
    unsafe { blk_discard(f.as_raw_fd(), &range) }
        .map_err(|e| DmError::io("BLKDISCARD on", dev, e.into()))?;
    Ok(())
}
