//! The devicemapper backend: Docker's devicemapper storage driver on a
//! dm-thin pool, in Docker's on-disk format (see docs/devicemapper.md).

pub mod admin;
pub mod deviceset;
pub mod directlvm;
pub mod error;
pub mod fs;
pub mod fsck;
pub mod lvm;
pub mod options;
pub mod sidecar;
pub mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use deviceset::{DeviceSet, FAILPOINTS};
pub use error::DevmapperError;
pub use options::{DmStoreOptions, Layout};

use crate::snapshot::mountspec::MountSpec;
use crate::snapshot::{CreateOpts, Driver, LayerId, LayerInfo, Result, SnapshotError, Usage};
use crate::units::Bytes;

/// The snapshot API over a [`DeviceSet`].
pub struct DevmapperDriver {
    set: DeviceSet,
}

impl DevmapperDriver {
    /// Opens (creating on first use) the store under `<root>/devicemapper`.
    pub fn open(root: &Path, options: &[String]) -> Result<DevmapperDriver> {
        let opts = DmStoreOptions::parse(options).map_err(DevmapperError::from)?;
        Ok(DevmapperDriver {
            set: DeviceSet::open(root, opts)?,
        })
    }

    pub fn device_set(&self) -> &DeviceSet {
        &self.set
    }

    /// `status` with raw numbers.
    pub fn status_report(&self) -> Result<status::StatusReport> {
        Ok(status::report(&self.set)?)
    }

    fn known(&self, id: &LayerId) -> Result<()> {
        if self.set.has_device(id.as_str()) {
            Ok(())
        } else {
            Err(SnapshotError::not_found(id))
        }
    }
}

impl Driver for DevmapperDriver {
    fn name(&self) -> &'static str {
        "devicemapper"
    }

    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()> {
        if let Some(p) = parent {
            self.known(p)?;
        }
        Ok(self.set.create(id, parent, opts)?)
    }

    fn remove(&self, id: &LayerId) -> Result<()> {
        Ok(self.set.remove(id)?)
    }

    fn get(&self, id: &LayerId, mount_label: Option<&str>) -> Result<PathBuf> {
        self.known(id)?;
        if self
            .set
            .layer_record(id.as_str())
            .is_some_and(|r| r.incomplete)
        {
            return Err(SnapshotError::Incomplete { id: id.to_string() });
        }
        Ok(self.set.get(id.as_str(), mount_label)?)
    }

    fn put(&self, id: &LayerId) -> Result<()> {
        self.known(id)?;
        Ok(self.set.put(id.as_str())?)
    }

    fn exists(&self, id: &LayerId) -> bool {
        self.set.has_device(id.as_str())
    }

    fn status(&self) -> Result<Vec<(String, String)>> {
        Ok(status::lines(&status::report(&self.set)?))
    }

    /// The pool's health (`docker info`'s numbers plus percentages, mode
    /// and warnings at the default thresholds): what `thinsnap pool
    /// status|check` read from a service's published status.
    fn status_json(&self) -> Result<serde_json::Value> {
        let h = admin::PoolHealth::read(&self.set, admin::Thresholds::default())?;
        serde_json::to_value(h).map_err(|e| SnapshotError::invalid(e.to_string()))
    }

    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>> {
        let info = self
            .set
            .device_info(id.as_str())
            .filter(|d| !d.deleted)
            .ok_or_else(|| SnapshotError::not_found(id))?;
        let mut m = BTreeMap::new();
        m.insert("DeviceId".into(), info.device_id.to_string());
        m.insert("DeviceSize".into(), info.size.to_string());
        m.insert("DeviceName".into(), self.set.device_name(id.as_str()));
        Ok(m)
    }

    fn cleanup(&self) -> Result<()> {
        Ok(self.set.cleanup()?)
    }

    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>> {
        self.known(id)?;
        Ok(self.set.layer_record(id.as_str()).and_then(|r| r.parent))
    }

    fn list(&self) -> Result<Vec<LayerInfo>> {
        let mut v = Vec::new();
        for d in self.set.devices() {
            if d.hash.is_empty() || d.deleted {
                continue;
            }
            let Ok(id) = LayerId::new(&d.hash) else {
                tracing::warn!(hash = %d.hash, "device with an id thinsnap cannot serve; skipped");
                continue;
            };
            v.push(LayerInfo {
                parent: d.parent.as_deref().and_then(|p| LayerId::new(p).ok()),
                mount_count: self.set.refs(&d.hash),
                incomplete: d.incomplete,
                id,
            });
        }
        Ok(v)
    }

    fn usage(&self, id: &LayerId) -> Result<Usage> {
        let info = self
            .set
            .device_info(id.as_str())
            .ok_or_else(|| SnapshotError::not_found(id))?;
        let usage = self.set.thin_usage()?;
        let blocks = usage
            .iter()
            .find(|u| u.id == info.device_id)
            .map(|u| u.exclusive_blocks)
            .unwrap_or(0);
        // Inodes this layer added over its parent (the base device for a
        // layer without a recorded parent).
        let parent = self
            .set
            .layer_record(id.as_str())
            .and_then(|r| r.parent)
            .map(|p| p.to_string())
            .unwrap_or_default();
        let own = self.set.used_inodes(id.as_str())?;
        let below = self.set.used_inodes(&parent)?;
        Ok(Usage {
            bytes: Bytes(blocks * self.set.block_size().0),
            inodes: own.saturating_sub(below),
        })
    }

    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()> {
        Ok(self.set.set_incomplete(id.as_str(), incomplete)?)
    }

    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        self.known(id)?;
        if self.set.layout() != Layout::Flat {
            return Err(SnapshotError::unsupported(
                "describing mounts of a Docker-layout devicemapper store",
                "its layers live under rootfs/ inside each filesystem; create the store with --storage-opt thinsnap.layout=flat",
            ));
        }
        let (dev, fstype) = self.set.prepare_device(id.as_str())?;
        let mut options = Vec::new();
        if fstype == "xfs" {
            options.push("nouuid".to_string());
        }
        options.push(if readonly { "ro" } else { "rw" }.to_string());
        Ok(vec![MountSpec {
            kind: fstype,
            source: dev.display().to_string(),
            target: None,
            options,
        }])
    }
}
