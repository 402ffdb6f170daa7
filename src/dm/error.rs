//! Errors of the device-mapper layer, each naming the device and the
//! operation so a storage admin can act on the message alone.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

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
    #[error("device-mapper {op} on {device} failed: {}", describe(.errno, .cause))]
    Ioctl {
        op: &'static str,
        device: String,
        /// The kernel's errno when the ioctl itself failed.
        errno: Option<Errno>,
        /// The crate's error (its text dumps ioctl headers, so it is not
        /// chained as a source; `describe` uses it only without an errno).
        cause: devicemapper::DmError,
    },

    /// A device name device-mapper cannot take.
    #[error("invalid device-mapper name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// `name` exists but is not the kind of device expected.
    #[error("device {name} is not a {expected} (its table is {table:?})")]
    WrongTarget {
        name: String,
        expected: &'static str,
        table: String,
    },

    /// The kernel returned a status or table line we cannot read.
    #[error("cannot parse the {what} of {device}: {line:?}")]
    Parse {
        what: &'static str,
        device: String,
        line: String,
    },

    #[error("{context} {}: {source}", .path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An external tool (thin_ls, mkfs, blkid...) failed; carries its stderr.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        args: String,
        status: String,
        stderr: String,
    },
}

fn describe(errno: &Option<Errno>, cause: &devicemapper::DmError) -> String {
    match errno {
        Some(e) => format!("{} ({})", e.desc(), e),
        None => cause.to_string(),
    }
}

impl DmError {
    /// The kernel errno behind an ioctl failure, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            DmError::Ioctl { errno, .. } => *errno,
            DmError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        DmError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// The errno carried by a `devicemapper` crate error, when the ioctl failed.
pub fn errno_of(e: &devicemapper::DmError) -> Option<Errno> {
    match e {
        devicemapper::DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            Some(**errno)
        }
        _ => None,
    }
}

/// Wraps a crate error with the operation and the device.
pub fn ioctl<'a>(
    op: &'static str,
    device: &'a str,
) -> impl FnOnce(devicemapper::DmError) -> DmError + 'a {
    move |cause| DmError::Ioctl {
        op,
        device: device.to_string(),
        errno: errno_of(&cause),
        cause,
    }
}
