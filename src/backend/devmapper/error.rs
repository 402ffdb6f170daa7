//! Errors of the devicemapper backend and how they map onto the snapshot
//! API's kinds. Messages keep Docker's wording where users search for it.

use nix::errno::Errno;

use super::options::OptionError;
use crate::dm::DmError;
use crate::metadata::MetadataError;
use crate::snapshot::{ErrorKind, SnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum DevmapperError {
    #[error(transparent)]
    Dm(#[from] DmError),

    #[error(transparent)]
    Metadata(#[from] MetadataError),

    #[error(transparent)]
    Option(#[from] OptionError),

    #[error("{tool} {target} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        target: String,
        status: String,
        stderr: String,
    },

    #[error(
        "devmapper: Base Device UUID and Filesystem verification failed: Current Base Device UUID:{current} does not match with stored UUID:{stored}. Possibly using a different thin pool than last invocation"
    )]
    UuidMismatch { current: String, stored: String },

    #[error("devmapper: Base device size cannot be smaller than {0}")]
    BaseShrink(String),

    #[error("devmapper: Container size cannot be smaller than {0}")]
    LayerShrink(String),

    #[error(
        "devmapper: Thin Pool has {free} free data blocks which is less than minimum required {min} free data blocks ({free_bytes} free of {total_bytes}). Create more free space in thin pool (remove unused layers, or `thinsnap pool extend`) or use dm.min_free_space option to change behavior"
    )]
    LowDataSpace {
        free: u64,
        min: u64,
        free_bytes: String,
        total_bytes: String,
    },

    #[error(
        "devmapper: Thin Pool has {free} free metadata blocks which is less than minimum required {min} free metadata blocks. Create more free metadata space in thin pool (`thinsnap pool extend --metadata +SIZE`, online) or use dm.min_free_space option to change behavior"
    )]
    LowMetaSpace { free: u64, min: u64 },

    #[error(
        "devmapper: Unable to take ownership of thin-pool ({0}) that already has used data blocks"
    )]
    PoolHasData(String),

    #[error("devmapper: Unable to take ownership of thin-pool ({0}) with non-zero transaction ID")]
    PoolHasTransaction(String),

    #[error(
        "devmapper: thin-pool {pool} has transaction id {pool_tid} but the metadata in {dir} expects {meta_tid}: the pool and this store do not belong together"
    )]
    TransactionMismatch {
        pool: String,
        pool_tid: u64,
        meta_tid: u64,
        dir: String,
    },

    #[error("devmapper: Unable to find a free device ID")]
    NoFreeId,

    #[error("devmapper: device {id} already exists. Deleted={deleted}")]
    AlreadyExists { id: String, deleted: bool },

    #[error("layer {0} is incomplete (an interrupted write); remove it")]
    Incomplete(String),

    #[error("{detail}")]
    Busy { id: String, detail: String },

    #[error("layer {id} still has child layers ({}); remove them first", .children.join(", "))]
    HasChildren { id: String, children: Vec<String> },

    #[error("devmapper: Unknown device {0}")]
    UnknownDevice(String),

    #[error("devmapper: {0}")]
    Other(String),

    #[error("devmapper: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DevmapperError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DevmapperError::Io {
            context: context.into(),
            source,
        }
    }

    fn kind(&self) -> ErrorKind {
        let by_errno = |e: Option<Errno>| match e {
            Some(Errno::ENOSPC) => ErrorKind::NoSpace,
            Some(Errno::EBUSY) => ErrorKind::Busy,
            Some(Errno::ENXIO) | Some(Errno::ENODATA) | Some(Errno::ENOENT) => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        match self {
            DevmapperError::Dm(DmError::Unavailable { .. })
            | DevmapperError::Dm(DmError::NoThinTarget) => ErrorKind::Unsupported,
            DevmapperError::Dm(DmError::InvalidName { .. }) => ErrorKind::InvalidInput,
            DevmapperError::Dm(e) => by_errno(e.errno()),
            DevmapperError::Metadata(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => ErrorKind::NoSpace,
                _ => ErrorKind::Corrupt,
            },
            DevmapperError::Option(_) => ErrorKind::InvalidInput,
            DevmapperError::LowDataSpace { .. }
            | DevmapperError::LowMetaSpace { .. }
            | DevmapperError::NoFreeId => ErrorKind::NoSpace,
            DevmapperError::LayerShrink(_) | DevmapperError::BaseShrink(_) => {
                ErrorKind::InvalidInput
            }
            DevmapperError::UnknownDevice(_) => ErrorKind::NotFound,
            DevmapperError::Busy { .. } => ErrorKind::Busy,
            DevmapperError::Incomplete(_) => ErrorKind::Incomplete,
            DevmapperError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            DevmapperError::HasChildren { .. } => ErrorKind::HasChildren,
            DevmapperError::UuidMismatch { .. }
            | DevmapperError::TransactionMismatch { .. }
            | DevmapperError::PoolHasData(_)
            | DevmapperError::PoolHasTransaction(_) => ErrorKind::Corrupt,
            DevmapperError::Io { source, .. } => {
                by_errno(source.raw_os_error().map(Errno::from_raw))
            }
            DevmapperError::Tool { .. } | DevmapperError::Other(_) => ErrorKind::Other,
        }
    }
}

impl From<DevmapperError> for SnapshotError {
    fn from(e: DevmapperError) -> SnapshotError {
        let kind = e.kind();
        match e {
            DevmapperError::Busy { id, detail } => return SnapshotError::Busy { id, detail },
            DevmapperError::HasChildren { id, children } => {
                return SnapshotError::HasChildren { id, children };
            }
            DevmapperError::UnknownDevice(id) => return SnapshotError::NotFound { id },
            DevmapperError::Incomplete(id) => return SnapshotError::Incomplete { id },
            DevmapperError::AlreadyExists { id, deleted } => {
                return SnapshotError::AlreadyExists {
                    detail: if deleted {
                        "it is marked for deferred deletion (Deleted=true) and goes away once nothing holds it".into()
                    } else {
                        String::new()
                    },
                    id,
                };
            }
            _ => {}
        }
        match kind {
            ErrorKind::NoSpace => SnapshotError::NoSpace {
                detail: e.to_string(),
            },
            ErrorKind::InvalidInput => SnapshotError::InvalidInput {
                detail: e.to_string(),
            },
            ErrorKind::Unsupported => SnapshotError::Unsupported {
                what: "the devicemapper backend".into(),
                detail: e.to_string(),
            },
            _ => SnapshotError::other(kind, "devicemapper", e),
        }
    }
}
