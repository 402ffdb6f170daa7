//! Opening the store every layer command works on, and the image records
//! `import` writes (`<root>/thinsnap-images/<NAME>.json`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GlobalArgs;
use crate::backend::{self, StoreConfig};
use crate::service::instance;
use crate::service::published::{self, Published};
use crate::snapshot::{Driver, ErrorKind, LayerId, Result, SnapshotError};

/// Opens the backend the global flags name. Refused while `thinsnap serve`
/// holds the store: two processes changing one store would race (a second
/// devicemapper DeviceSet would even roll back the service's open
/// transaction). `status` and `ls` read what the service publishes instead
/// (see [`served`]).
pub fn open(global: &GlobalArgs) -> Result<Box<dyn Driver>> {
    if let Some(info) = instance::running(&global.root) {
        return Err(SnapshotError::Other {
            kind: ErrorKind::Busy,
            context: format!("the store at {}", global.root.display()),
            source: format!(
                "it is served by thinsnap serve (pid {}, socket {}): change it through the service (`thinsnap snapshots ...`) or stop the service first; `thinsnap status`, `thinsnap ls` and `thinsnap snapshots ls|usage` work meanwhile",
                info.pid,
                info.socket.display()
            )
            .into(),
        });
    }
    backend::open(&StoreConfig {
        root: global.root.clone(),
        driver: global.driver.clone(),
        storage_opts: global.storage_opts.clone(),
    })
}

/// One imported layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedLayer {
    /// `sha256:<hex>` of the uncompressed tar (OCI diff id).
    pub diff_id: String,
    /// `sha256:<hex>` chain id; its hex part is the layer id.
    pub chain_id: String,
    pub layer: LayerId,
    /// Bytes of file data applied.
    pub size: u64,
}

/// An image as `import` built it: its layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: LayerId,
    pub driver: String,
    pub layers: Vec<ImportedLayer>,
}

impl ImageRecord {
    fn path(root: &Path, name: &LayerId) -> PathBuf {
        root.join("thinsnap-images").join(format!("{name}.json"))
    }

    pub fn store(&self, root: &Path) -> Result<()> {
        let path = Self::path(root, &self.name);
        let dir = root.join("thinsnap-images");
        crate::fsutil::ensure_dir(&dir, 0o700)
            .map_err(|e| SnapshotError::io_path("creating", &dir, e))?;
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| SnapshotError::invalid(e.to_string()))?;
        crate::fsutil::atomic_write(&path, &bytes, 0o600)
            .map_err(|e| SnapshotError::io_path("writing", &path, e))
    }

    pub fn load(root: &Path, name: &LayerId) -> Result<Option<ImageRecord>> {
        let path = Self::path(root, name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| SnapshotError::Corrupt {
                    path,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::io_path("reading", &path, e)),
        }
    }
}

/// Resolves `--image`: an image name recorded by `import` (its top layer)
/// or a layer id.
pub fn resolve_image(root: &Path, driver: &dyn Driver, image: &LayerId) -> Result<LayerId> {
    if let Some(rec) = ImageRecord::load(root, image)? {
        return rec
            .layers
            .last()
            .map(|l| l.layer.clone())
            .ok_or_else(|| SnapshotError::invalid(format!("image {image} has no layers")));
    }
    if driver.exists(image) {
        return Ok(image.clone());
    }
    Err(SnapshotError::NotFound {
        id: image.to_string(),
    })
}

/// What a running service published for its store (`None`: not served).
pub fn served(global: &GlobalArgs) -> std::result::Result<Option<Published>, String> {
    let Some(info) = instance::running(&global.root) else {
        return Ok(None);
    };
    // Right after start the service may not have published yet.
    let deadline = std::time::Instant::now() + published::PUBLISH_INTERVAL * 2;
    loop {
        match published::read(&global.root) {
            Ok(p) => return Ok(Some(p)),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(format!(
                    "the store is served by thinsnap serve (pid {}), which has not published its status: {e}",
                    info.pid
                ));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Refuses a command that must not run beside `thinsnap serve` on the
/// same root (a second DeviceSet would race the service's transactions);
/// `instead` says what works meanwhile.
pub fn refuse_while_served(global: &GlobalArgs, instead: &str) -> std::result::Result<(), String> {
    match instance::running(&global.root) {
        None => Ok(()),
        Some(info) => Err(format!(
            "the store at {} is served by thinsnap serve (pid {}, socket {}): stop the service for this command{instead}",
            global.root.display(),
            info.pid,
            info.socket.display()
        )),
    }
}

/// The line `status` and `ls` print above what a service published.
pub fn served_note(p: &Published) -> String {
    format!(
        "(served by thinsnap serve, pid {}; as of {} s ago)",
        p.pid,
        p.age_secs()
    )
}
