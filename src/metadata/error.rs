//! Errors of the metadata store; every one names the file.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{action} metadata file {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("metadata file {} is not valid: {source}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("metadata file {} is empty", .path.display())]
    Empty { path: PathBuf },
}

impl MetadataError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        MetadataError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The errno of an I/O failure (ENOSPC on a full metadata filesystem...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            MetadataError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
