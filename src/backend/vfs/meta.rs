//! `<root>/vfs/meta/<id>`: what vfs knows about a layer beyond its tree.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::snapshot::{LayerId, Result, SnapshotError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub parent: Option<LayerId>,
    /// Set while a tar is applied; a crash or a bad tar leaves it set.
    #[serde(default)]
    pub incomplete: bool,
}

impl LayerMeta {
    /// Loads the file; a missing file is a parentless complete layer (a
    /// layer written by Docker's own vfs driver has none).
    pub fn load(path: &Path) -> Result<LayerMeta> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("not a vfs layer record: {e}; remove the layer or fix the file"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LayerMeta::default()),
            Err(e) => Err(SnapshotError::io_path("reading", path, e)),
        }
    }

    pub fn store(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| SnapshotError::invalid(e.to_string()))?;
        fsutil::atomic_write(path, &bytes, 0o600)
            .map_err(|e| SnapshotError::io_path("writing", path, e))
    }
}
