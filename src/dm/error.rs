//! Errors of the device-mapper layer, each naming the device and the
//! operation so a storage admin can act on the message alone.

use std::io;
use std::path::PathBuf;

pub type DmResult<T> = Result<T, DmError>;

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// The kernel has no device-mapper (no `/dev/mapper/control`).
    #[error(
        "device-mapper is not available on this kernel ({detail}); thin pools need the dm-thin-pool \
         module (try `modprobe dm_thin_pool`), or run thinsnap in the test VM (`make demo`) \
         or pick a union backend such as overlay2"
    )]
    Unavailable { detail: String },

    /// device-mapper is there but the `thin-pool` target is not.
    #[error(
        "the kernel's device-mapper has no thin-pool target; load it with `modprobe dm_thin_pool`"
    )]
    NoThinTarget,

    /// An ioctl failed; keeps the operation, the device and the errno.
    #[error("device-mapper {op} on {device} failed: {source}")]
    Ioctl {
        op: &'static str,
        device: String,
        #[source]
        source: devicemapper::DmError,
    },

    #[error("{context} {}: {source}", .path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
