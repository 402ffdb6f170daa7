//! The service's own vocabulary: snapshot kinds, what a snapshot looks like
//! to a client, and the errors the business code returns. Nothing here knows
//! about protobuf or gRPC; `convert` translates at the edge.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotError;

/// Longest key (or name) accepted: keys are never paths, but they travel in
/// every record and listing, so an unbounded one is refused.
pub const MAX_KEY_LEN: usize = 4096;

/// containerd's limit on one label: key and value together.
pub const MAX_LABEL_LEN: usize = 4096;

/// What a snapshot is for, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, never committable (`View`).
    View,
    /// Writable, may be committed (`Prepare`).
    Active,
    /// Read-only, may be the parent of others (`Commit`).
    Committed,
}

impl Kind {
    /// The spelling containerd's filters and `ctr` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    /// Parses a filter value (`active`, `Committed`, `KindView`, ...).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        match lower.strip_prefix("kind").unwrap_or(&lower) {
            "view" => Some(Kind::View),
            "active" => Some(Kind::Active),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// A snapshot as clients see it (`Stat`, `Walk`, `Update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The key (active/view) or name (committed).
    pub name: String,
    /// The parent's name; `None` for a snapshot on the empty tree.
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Space a snapshot uses on its own, excluding its parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotUsage {
    pub size: u64,
    pub inodes: u64,
}

/// Why a request failed, in the classes containerd acts on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("snapshot {key:?} does not exist")]
    NotFound { key: String },

    #[error("snapshot {key:?} already exists{}", if *.in_progress { " (an operation on it is in progress)" } else { "" })]
    AlreadyExists { key: String, in_progress: bool },

    /// The request is valid but the snapshot is in the wrong state
    /// (commit of a view, remove with children, parent not committed).
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The backend refused or failed; the kind of the source decides the class.
    #[error("{context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: SnapshotError,
    },

    #[error(transparent)]
    Records(#[from] super::records::RecordError),

    /// A failpoint armed with `error` (crash tests).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),

    /// The service is shutting down or a worker thread died.
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError {
    pub fn not_found(key: &str) -> Self {
        ServiceError::NotFound {
            key: key.to_string(),
        }
    }

    pub fn backend(context: impl Into<String>, source: SnapshotError) -> Self {
        ServiceError::Backend {
            context: context.into(),
            source,
        }
    }
}

pub type ServiceResult<T> = std::result::Result<T, ServiceError>;

/// Refuses empty or oversized keys and names.
pub fn validate_key(what: &str, key: &str) -> ServiceResult<()> {
    if key.is_empty() {
        return Err(ServiceError::InvalidArgument(format!("{what} is empty")));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ServiceError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(ServiceError::InvalidArgument(format!(
            "{what} {key:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// Refuses labels containerd itself would refuse (key + value over 4096 bytes, empty key).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> ServiceResult<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(ServiceError::InvalidArgument("label key is empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_LEN {
            return Err(ServiceError::InvalidArgument(format!(
                "label {k:?} is {} bytes with its value; the limit is {MAX_LABEL_LEN}",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parsing() {
        assert_eq!(Kind::parse("active"), Some(Kind::Active));
        assert_eq!(Kind::parse("Committed"), Some(Kind::Committed));
        assert_eq!(Kind::parse("KindView"), Some(Kind::View));
        assert_eq!(Kind::parse("bogus"), None);
        assert_eq!(Kind::Committed.as_str(), "committed");
    }

    #[test]
    fn key_and_label_limits() {
        assert!(validate_key("key", "default/3/sha256:abc").is_ok());
        assert!(validate_key("key", "").is_err());
        assert!(validate_key("key", "a\0b").is_err());
        assert!(validate_key("key", &"k".repeat(MAX_KEY_LEN + 1)).is_err());
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "x".to_string());
        assert!(validate_labels(&labels).is_ok());
        labels.insert("big".to_string(), "v".repeat(MAX_LABEL_LEN));
        let e = validate_labels(&labels).unwrap_err().to_string();
        assert!(e.contains("\"big\""), "{e}");
    }
}
