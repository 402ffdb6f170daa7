//! Errors of the layer-tar layer. Every message names the tar entry (or the
//! file) it is about, so an admin can find the offending member of a layer.

use std::io;

use crate::snapshot::{ErrorKind, SnapshotError};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The entry would write outside the layer root or through a symlink.
    #[error("tar entry {entry:?} is refused: {reason}")]
    Unsafe { entry: String, reason: String },

    /// The entry is well-formed tar but cannot be applied as a layer member.
    #[error("tar entry {entry:?}: {detail}")]
    BadEntry { entry: String, detail: String },

    /// A size claim larger than the space the layer can ever hold.
    #[error(
        "tar entry {entry:?} claims {claimed} bytes but the filesystem holding the layer has only {available} bytes free"
    )]
    TooLarge {
        entry: String,
        claimed: u64,
        available: u64,
    },

    /// The stream is not a readable tar (truncated, bad checksum, ...).
    #[error("the tar stream is corrupt or truncated{}: {source}", after_entry(.after))]
    Corrupt {
        after: Option<String>,
        #[source]
        source: io::Error,
    },

    #[error("{what} is not supported: {detail}")]
    Unsupported { what: String, detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(name) => format!(" after entry {name:?}"),
        None => " before its first complete entry".to_string(),
    }
}

impl LayerError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        LayerError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn unsafe_entry(entry: &str, reason: impl Into<String>) -> Self {
        LayerError::Unsafe {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    pub fn bad_entry(entry: &str, detail: impl Into<String>) -> Self {
        LayerError::BadEntry {
            entry: entry.to_string(),
            detail: detail.into(),
        }
    }

    /// The shared error kind callers act on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LayerError::Unsafe { .. }
            | LayerError::BadEntry { .. }
            | LayerError::Corrupt { .. } => ErrorKind::InvalidInput,
            LayerError::TooLarge { .. } => ErrorKind::NoSpace,
            LayerError::Unsupported { .. } => ErrorKind::Unsupported,
            LayerError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
                _ => ErrorKind::Io,
            },
        }
    }

    /// Wraps into the shared error with what was being done (`applying a
    /// layer tar to /var/lib/...`).
    pub fn into_snapshot(self, context: impl Into<String>) -> SnapshotError {
        let context = context.into();
        match self {
            LayerError::Io { context: c, source } => {
                SnapshotError::io(format!("{context}: {c}"), source)
            }
            other => SnapshotError::other(other.kind(), context, other),
        }
    }
}

/// Adds the path being worked on to an `io::Result`.
pub(crate) trait IoCtx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LayerError>;
}

impl<T> IoCtx<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LayerError> {
        self.map_err(|e| LayerError::io(what(), e))
    }
}

impl<T> IoCtx<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, LayerError> {
        self.map_err(|e| LayerError::io(what(), io::Error::from(e)))
    }
}
