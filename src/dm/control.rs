//! Opening device-mapper and asking the kernel what it supports.

use std::path::Path;

use devicemapper::DM;

use super::error::{DmError, DmResult};

/// Where the kernel exposes device-mapper's control node.
pub const CONTROL_PATH: &str = "/dev/mapper/control";

/// An open device-mapper control handle.
pub struct DmControl {
    dm: DM,
}

/// A loaded dm target type and its version (`thin-pool 1.23.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetVersion {
    pub name: String,
    pub version: (u32, u32, u32),
}

impl DmControl {
    /// Opens `/dev/mapper/control`. Fails with one clear sentence when the
    /// kernel has no device-mapper, instead of a bare ENOENT.
    pub fn open() -> DmResult<Self> {
        if !Path::new(CONTROL_PATH).exists() {
            let detail = if proc_misc_has_device_mapper() {
                format!(
                    "{CONTROL_PATH} is missing although the kernel registered device-mapper; create it with `mknod {CONTROL_PATH} c 10 236`"
                )
            } else {
                format!("{CONTROL_PATH} does not exist and /proc/misc lists no device-mapper")
            };
            return Err(DmError::Unavailable { detail });
        }
        let dm = DM::new().map_err(|e| DmError::Unavailable {
            detail: format!("opening {CONTROL_PATH}: {e}"),
        })?;
        Ok(DmControl { dm })
    }

    /// The underlying crate handle, for the rest of the dm layer.
    pub fn dm(&self) -> &DM {
        &self.dm
    }

    /// The kernel's dm ioctl interface version (e.g. 4.47.0).
    pub fn driver_version(&self) -> DmResult<(u32, u32, u32)> {
        self.dm.version().map_err(|source| DmError::Ioctl {
            op: "version",
            device: CONTROL_PATH.to_string(),
            source,
        })
    }

    /// Every target type the kernel has loaded.
    pub fn targets(&self) -> DmResult<Vec<TargetVersion>> {
        let list = self.dm.list_versions().map_err(|source| DmError::Ioctl {
            op: "list_versions",
            device: CONTROL_PATH.to_string(),
            source,
        })?;
        Ok(list
            .into_iter()
            .map(|(name, major, minor, patch)| TargetVersion {
                name,
                version: (major, minor, patch),
            })
            .collect())
    }

    /// The thin-pool target's version, or `NoThinTarget`.
    pub fn thin_pool_version(&self) -> DmResult<(u32, u32, u32)> {
        self.targets()?
            .into_iter()
            .find(|t| t.name == "thin-pool")
            .map(|t| t.version)
            .ok_or(DmError::NoThinTarget)
    }
}

fn proc_misc_has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|s| s.lines().any(|l| l.ends_with(" device-mapper")))
        .unwrap_or(false)
}
