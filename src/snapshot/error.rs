//! The one error type every backend returns, so callers (CLI, service,
//! container helpers) can act on the kind of failure without knowing which
//! backend produced it. Backend-specific detail travels in the message and
//! the `source` chain.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Busy,
    HasChildren,
    NoSpace,
    Unsupported,
    InvalidInput,
    Incomplete,
    Corrupt,
    Io,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("layer {id} does not exist")]
    NotFound { id: String },

    #[error("layer {id} already exists{}", detail_suffix(.detail))]
    AlreadyExists { id: String, detail: String },

    #[error("layer {id} is busy: {detail}")]
    Busy { id: String, detail: String },

    #[error("layer {id} still has child layers ({}); remove them first", .children.join(", "))]
    HasChildren { id: String, children: Vec<String> },

    #[error("not enough space: {detail}")]
    NoSpace { detail: String },

    #[error("{what} is not supported{}", detail_suffix(.detail))]
    Unsupported { what: String, detail: String },

    #[error("invalid input: {detail}")]
    InvalidInput { detail: String },

    #[error(
        "layer {id} is incomplete (an earlier write was interrupted) and cannot be used; remove it"
    )]
    Incomplete { id: String },

    #[error("corrupt state in {}: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{context}: {source}")]
    Other {
        kind: ErrorKind,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl SnapshotError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::NotFound { .. } => ErrorKind::NotFound,
            SnapshotError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            SnapshotError::Busy { .. } => ErrorKind::Busy,
            SnapshotError::HasChildren { .. } => ErrorKind::HasChildren,
            SnapshotError::NoSpace { .. } => ErrorKind::NoSpace,
            SnapshotError::Unsupported { .. } => ErrorKind::Unsupported,
            SnapshotError::InvalidInput { .. } => ErrorKind::InvalidInput,
            SnapshotError::Incomplete { .. } => ErrorKind::Incomplete,
            SnapshotError::Corrupt { .. } => ErrorKind::Corrupt,
            SnapshotError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
                Some(libc::EBUSY) => ErrorKind::Busy,
                _ => ErrorKind::Io,
            },
            SnapshotError::Other { kind, .. } => *kind,
        }
    }

    pub fn not_found(id: impl ToString) -> Self {
        SnapshotError::NotFound { id: id.to_string() }
    }

    pub fn already_exists(id: impl ToString) -> Self {
        SnapshotError::AlreadyExists {
            id: id.to_string(),
            detail: String::new(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        SnapshotError::InvalidInput {
            detail: detail.into(),
        }
    }

    pub fn unsupported(what: impl Into<String>, detail: impl Into<String>) -> Self {
        SnapshotError::Unsupported {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        SnapshotError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error on `path`: "<action> <path>: <error>".
    pub fn io_path(action: &str, path: &Path, source: io::Error) -> Self {
        SnapshotError::Io {
            context: format!("{action} {}", path.display()),
            source,
        }
    }

    /// Wraps a backend's own error type, keeping it as the source.
    pub fn other(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SnapshotError::Other {
            kind,
            context: context.into(),
            source: Box::new(source),
        }
    }
}

impl From<super::id::IdError> for SnapshotError {
    fn from(e: super::id::IdError) -> Self {
        SnapshotError::InvalidInput {
            detail: e.to_string(),
        }
    }
}

/// Adds "what we were doing" to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| SnapshotError::io_path(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e = SnapshotError::HasChildren {
            id: "a".into(),
            children: vec!["b".into(), "c".into()],
        };
        assert_eq!(e.kind(), ErrorKind::HasChildren);
        assert_eq!(
            e.to_string(),
            "layer a still has child layers (b, c); remove them first"
        );
        let io = SnapshotError::io("writing x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(io.kind(), ErrorKind::NoSpace);
        let e: SnapshotError = super::super::id::LayerId::new("a/b").unwrap_err().into();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
}
