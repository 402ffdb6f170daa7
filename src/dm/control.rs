//! Opening device-mapper, asking the kernel what it supports, and the
//! handful of generic device operations (create, load, suspend, resume,
//! remove, message, status) everything else in `dm` is built from.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use devicemapper::{DM, DevId, DmFlags, DmName, DmOptions};
use nix::errno::Errno;

use super::devnode;
use super::error::{DmError, DmResult, ioctl};

/// Where the kernel exposes device-mapper's control node.
pub const CONTROL_PATH: &str = "/dev/mapper/control";

/// Longest device-mapper name (DM_NAME_LEN - 1).
pub const MAX_NAME_LEN: usize = 127;

/// An open device-mapper control handle. The kernel serialises ioctls per
/// device; the handle itself is safe to share between threads.
pub struct DmControl {
    dm: DM,
}

/// A loaded dm target type and its version (`thin-pool 1.23.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetVersion {
    pub name: String,
    pub version: (u32, u32, u32),
}

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNo {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for DevNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNo {
    /// Parses `253:4`.
    pub fn parse(s: &str) -> Option<DevNo> {
        let (a, b) = s.split_once(':')?;
        Some(DevNo {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }

    /// `/dev/<name>` of this device as the kernel names it (from sysfs), so
    /// it works without udev (`/dev/block/M:m` links are udev's).
    pub fn devnode(&self) -> Option<std::path::PathBuf> {
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{self}/uevent")).ok()?;
        uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(|n| Path::new("/dev").join(n))
    }
}

/// What the kernel says about one dm device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevState {
    pub devno: DevNo,
    pub open_count: i32,
    pub suspended: bool,
    /// A deferred remove is pending (removed when the last opener closes).
    pub deferred_remove: bool,
}

/// One target line of a table or status (`start len type params`).
pub type TargetLine = (u64, u64, String, String);

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

    /// The kernel's dm ioctl interface version (e.g. 4.47.0).
    pub fn driver_version(&self) -> DmResult<(u32, u32, u32)> {
        self.dm.version().map_err(ioctl("version", CONTROL_PATH))
    }

    /// Every target type the kernel has loaded.
    pub fn targets(&self) -> DmResult<Vec<TargetVersion>> {
        let list = self
            .dm
            .list_versions()
            .map_err(ioctl("list_versions", CONTROL_PATH))?;
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

    /// True when the kernel can defer removal of busy devices (dm >= 4.27).
    pub fn supports_deferred_remove(&self) -> bool {
        self.driver_version()
            .map(|(a, b, _)| (a, b) >= (4, 27))
            .unwrap_or(false)
    }

    /// The device's state, or `None` when no such device exists.
    pub fn info(&self, name: &str) -> DmResult<Option<DevState>> {
        let n = dm_name(name)?;
        match self.dm.device_info(&DevId::Name(n)) {
            Ok(info) => {
                let dev = info.device();
                let flags = info.flags();
                Ok(Some(DevState {
                    devno: DevNo {
                        major: dev.major,
                        minor: dev.minor,
                    },
                    open_count: info.open_count(),
                    suspended: flags.contains(DmFlags::DM_SUSPEND),
                    deferred_remove: flags.contains(DmFlags::DM_DEFERRED_REMOVE),
                }))
            }
            Err(e) if super::error::errno_of(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(ioctl("info", name)(e)),
        }
    }

    /// The device's dm uuid (`LVM-…` for LVM volumes), `None` when the
    /// device has none or does not exist.
    pub fn uuid(&self, name: &str) -> DmResult<Option<String>> {
        let n = dm_name(name)?;
        match self.dm.device_info(&DevId::Name(n)) {
            Ok(info) => Ok(info.uuid().map(|u| u.to_string())),
            Err(e) if super::error::errno_of(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(ioctl("info", name)(e)),
        }
    }

    /// Creates device `name` with `table` and activates it; on failure the
    /// half-made device is removed again. Makes `/dev/mapper/<name>`.
    pub fn create(&self, name: &str, table: &[TargetLine]) -> DmResult<DevNo> {
        let n = dm_name(name)?;
        let id = DevId::Name(n);
        self.dm
            .device_create(n, None, DmOptions::private())
            .map_err(ioctl("create", name))?;
        let loaded = self
            .dm
            .table_load(&id, table, DmOptions::private())
            .map_err(ioctl("table load", name))
            .and_then(|_| {
                self.dm
                    .device_suspend(&id, DmOptions::private())
                    .map_err(ioctl("resume", name))
            });
        match loaded {
            Ok(info) => {
                let devno = DevNo {
                    major: info.device().major,
                    minor: info.device().minor,
                };
                devnode::ensure(name, devno)?;
                Ok(devno)
            }
            Err(e) => {
                let _ = self.dm.device_remove(&id, DmOptions::private());
                Err(e)
            }
        }
    }

    /// Loads a new table into an existing device and swaps it in
    /// (suspend, load, resume), e.g. to grow a pool or a thin device.
    pub fn reload(&self, name: &str, table: &[TargetLine]) -> DmResult<()> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .table_load(&id, table, DmOptions::private())
            .map_err(ioctl("table load", name))?;
        self.suspend(name)?;
        self.resume(name)
    }

    pub fn suspend(&self, name: &str) -> DmResult<()> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .device_suspend(&id, DmOptions::private().set_flags(DmFlags::DM_SUSPEND))
            .map_err(ioctl("suspend", name))?;
        Ok(())
    }

    pub fn resume(&self, name: &str) -> DmResult<()> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .device_suspend(&id, DmOptions::private())
            .map_err(ioctl("resume", name))?;
        Ok(())
    }

    /// Removes device `name`. `deferred` lets the kernel finish the removal
    /// when the last opener closes it. A missing device is not an error.
    /// EBUSY is retried for about `busy_wait` before it is returned.
    pub fn remove(&self, name: &str, deferred: bool, busy_wait: Duration) -> DmResult<()> {
        let id = DevId::Name(dm_name(name)?);
        let options = if deferred {
            DmOptions::private().set_flags(DmFlags::DM_DEFERRED_REMOVE)
        } else {
            DmOptions::private()
        };
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        loop {
            match self.dm.device_remove(&id, options) {
                Ok(_) => break,
                Err(e) => match super::error::errno_of(&e) {
                    Some(Errno::ENXIO) => break,
                    Some(Errno::EBUSY) if waited < busy_wait => {
                        sleep(step);
                        waited += step;
                    }
                    _ => return Err(ioctl("remove", name)(e)),
                },
            }
        }
        if deferred && self.info(name)?.is_some() {
            // Still open: the node must stay until the kernel removes it.
            return Ok(());
        }
        devnode::remove(name);
        Ok(())
    }

    /// Cancels a pending deferred remove (`@cancel_deferred_remove`).
    pub fn cancel_deferred_remove(&self, name: &str) -> DmResult<()> {
        match self.message(name, "@cancel_deferred_remove") {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(Errno::ENXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a target message to sector 0 of `name`; returns the reply.
    pub fn message(&self, name: &str, msg: &str) -> DmResult<Option<String>> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .target_msg(&id, Some(0), msg)
            .map(|(_, reply)| reply)
            .map_err(|cause| DmError::Ioctl {
                op: "message",
                device: format!("{name} ({msg:?})"),
                errno: super::error::errno_of(&cause),
                cause,
            })
    }

    /// The status lines of the live table.
    pub fn status(&self, name: &str) -> DmResult<Vec<TargetLine>> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .table_status(&id, DmOptions::default())
            .map(|(_, lines)| lines)
            .map_err(ioctl("status", name))
    }

    /// The live table's lines.
    pub fn table(&self, name: &str) -> DmResult<Vec<TargetLine>> {
        let id = DevId::Name(dm_name(name)?);
        self.dm
            .table_status(
                &id,
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map(|(_, lines)| lines)
            .map_err(ioctl("table", name))
    }

    /// Names of every dm device.
    pub fn list(&self) -> DmResult<Vec<String>> {
        Ok(self
            .dm
            .list_devices()
            .map_err(ioctl("list", CONTROL_PATH))?
            .into_iter()
            .map(|(name, _, _)| name.to_string())
            .collect())
    }
}

/// Validates a dm name (≤ 127 bytes, no `/`).
pub fn dm_name(name: &str) -> DmResult<&DmName> {
    if name.len() > MAX_NAME_LEN {
        return Err(DmError::InvalidName {
            name: name.to_string(),
            reason: format!("{} bytes; device-mapper allows {MAX_NAME_LEN}", name.len()),
        });
    }
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        return Err(DmError::InvalidName {
            name: name.to_string(),
            reason: "must be non-empty and contain no '/'".into(),
        });
    }
    DmName::new(name).map_err(|e| DmError::InvalidName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

fn proc_misc_has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|s| s.lines().any(|l| l.ends_with(" device-mapper")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devno_parses() {
        assert_eq!(
            DevNo::parse("253:4"),
            Some(DevNo {
                major: 253,
                minor: 4
            })
        );
        assert_eq!(DevNo::parse("253"), None);
        assert_eq!(DevNo::parse("a:b"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(dm_name("docker-8:1-123-pool").is_ok());
        assert!(dm_name(&"x".repeat(128)).is_err());
        assert!(dm_name("a/b").is_err());
    }
}
