//! thinsnap's own per-layer state for the devicemapper backend: parent
//! links (Docker keeps those in its layer database, not in the driver) and
//! incomplete marks, plus store-wide settings.
//!
//! It lives in `<home>/thinsnap/`, outside `metadata/`: Docker's loader
//! treats every non-dot file under `metadata/` (recursively) as a device,
//! so a store thinsnap wrote must not carry extra files there.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DevmapperError;
use crate::fsutil;
use crate::snapshot::LayerId;

/// What thinsnap records about one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// `None`: a snapshot of the base device (an empty layer).
    pub parent: Option<LayerId>,
    #[serde(default)]
    pub incomplete: bool,
}

/// Settings fixed when the store is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub layout: String,
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    dir: PathBuf,
}

impl Sidecar {
    pub fn open(home: &Path) -> Result<Sidecar, DevmapperError> {
        let dir = home.join("thinsnap");
        let layers = dir.join("layers");
        fsutil::ensure_dir(&layers, 0o700)
            .map_err(|e| DevmapperError::io(format!("creating {}", layers.display()), e))?;
        Ok(Sidecar { dir })
    }

    fn layer_path(&self, id: &str) -> PathBuf {
        self.dir.join("layers").join(format!("{id}.json"))
    }

    pub fn load_store(&self) -> Result<Option<StoreRecord>, DevmapperError> {
        read(&self.dir.join("store.json"))
    }

    pub fn save_store(&self, rec: &StoreRecord) -> Result<(), DevmapperError> {
        write(&self.dir.join("store.json"), rec)
    }

    /// Every layer record, by id; unreadable records are returned as errors
    /// by name so the caller can report them.
    pub fn load_layers(
        &self,
    ) -> Result<(BTreeMap<String, LayerRecord>, Vec<String>), DevmapperError> {
        let dir = self.dir.join("layers");
        let mut out = BTreeMap::new();
        let mut broken = Vec::new();
        let entries = fs::read_dir(&dir)
            .map_err(|e| DevmapperError::io(format!("listing {}", dir.display()), e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match read::<LayerRecord>(&e.path()) {
                Ok(Some(r)) => {
                    out.insert(id.to_string(), r);
                }
                Ok(None) => {}
                Err(err) => broken.push(err.to_string()),
            }
        }
        Ok((out, broken))
    }

    pub fn save_layer(&self, id: &str, rec: &LayerRecord) -> Result<(), DevmapperError> {
        write(&self.layer_path(id), rec)
    }

    /// Unlinks a layer's record without waiting for the directory to reach
    /// the disk: for a device already deleted from the pool, whose record
    /// the next start drops anyway if the unlink is lost in a crash.
    pub fn forget_layer(&self, id: &str) {
        let p = self.layer_path(id);
        if let Err(e) = fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %p.display(), error = %e,
                "could not remove the record of a deleted layer; the next start drops it");
        }
    }

    pub fn remove_layer(&self, id: &str) -> Result<(), DevmapperError> {
        let p = self.layer_path(id);
        fsutil::remove_durable(&p)
            .map_err(|e| DevmapperError::io(format!("removing {}", p.display()), e))
    }
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, DevmapperError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| DevmapperError::Other(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DevmapperError::io(format!("reading {}", path.display()), e)),
    }
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), DevmapperError> {
    let bytes = serde_json::to_vec(value).map_err(|e| DevmapperError::Other(e.to_string()))?;
    fsutil::atomic_write(path, &bytes, 0o600)
        .map_err(|e| DevmapperError::io(format!("writing {}", path.display()), e))
}
