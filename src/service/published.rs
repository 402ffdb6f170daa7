//! What a running service publishes for the read-only CLI commands.
//!
//! While `thinsnap serve` holds a store, no other process may open it (a
//! second devicemapper DeviceSet would race the service's transactions).
//! `thinsnap status` and `thinsnap ls` therefore read this file instead:
//! the service rewrites it atomically at start, every
//! [`PUBLISH_INTERVAL`] when anything changed, and at shutdown. Usage per
//! snapshot comes live through the socket (`thinsnap snapshots usage`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::instance::SERVICE_DIR;
use crate::snapshot::Driver;

/// How stale the published status may get while the store changes.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);
const FILE: &str = "status.json";

/// One layer as `thinsnap ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedLayer {
    pub id: String,
    pub parent: Option<String>,
    pub mounted: u32,
    pub incomplete: bool,
}

/// The store as the service last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub pid: u32,
    /// Seconds since the epoch when this was taken.
    pub taken_at: u64,
    pub driver: String,
    pub status: Vec<(String, String)>,
    pub raw: serde_json::Value,
    pub layers: Vec<PublishedLayer>,
}

impl Published {
    /// Takes the driver's status and layer list now.
    pub fn take(driver: &dyn Driver) -> crate::snapshot::Result<Published> {
        let layers = driver
            .list()?
            .into_iter()
            .map(|l| PublishedLayer {
                id: l.id.to_string(),
                parent: l.parent.map(|p| p.to_string()),
                mounted: l.mount_count,
                incomplete: l.incomplete,
            })
            .collect();
        Ok(Published {
            pid: std::process::id(),
            taken_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            driver: driver.name().to_string(),
            status: driver.status()?,
            raw: driver.status_json()?,
            layers,
        })
    }

    /// True when nothing but the time differs.
    pub fn same_state(&self, other: &Published) -> bool {
        self.status == other.status && self.raw == other.raw && self.layers == other.layers
    }

    /// Age in seconds, for the CLI's header line.
    pub fn age_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(self.taken_at))
            .unwrap_or(0)
    }
}

pub fn path(root: &Path) -> PathBuf {
    root.join(SERVICE_DIR).join(FILE)
}

/// Writes atomically (readers never see half a file).
pub fn write(root: &Path, p: &Published) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
    crate::fsutil::atomic_write(&path(root), &bytes, 0o600)
}

/// Reads what the service of `root` published.
pub fn read(root: &Path) -> Result<Published, String> {
    let path = path(root);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "reading {} (written by thinsnap serve): {e}",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vfs::VfsDriver;
    use crate::snapshot::{CreateOpts, LayerId};

    #[test]
    fn round_trip_and_change_detection() {
        let dir = tempfile::tempdir().unwrap();
        let d = VfsDriver::open(dir.path(), &[]).unwrap();
        let a = Published::take(&d).unwrap();
        std::fs::create_dir_all(dir.path().join(SERVICE_DIR)).unwrap();
        write(dir.path(), &a).unwrap();
        assert_eq!(read(dir.path()).unwrap(), a);
        d.create(&LayerId::new("l1").unwrap(), None, &CreateOpts::default())
            .unwrap();
        let b = Published::take(&d).unwrap();
        assert!(!a.same_state(&b));
        assert_eq!(b.layers[0].id, "l1");
        let missing = read(&dir.path().join("nowhere")).unwrap_err();
        assert!(missing.contains("thinsnap serve"), "{missing}");
    }
}
