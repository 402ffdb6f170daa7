//! What this host can do: kernel, device-mapper, filesystems, d_type, udev.
//! `thinsnap doctor` prints it, and the driver chooser decides from it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dm::DmControl;

/// Everything `doctor` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub kernel: String,
    pub device_mapper: DeviceMapperReport,
    pub filesystems: FilesystemReport,
    pub root: RootReport,
    pub udev_running: bool,
    /// Backends whose data already exists under the root, in chooser order.
    pub existing_stores: Vec<String>,
    pub recommendation: Recommendation,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceMapperReport {
    /// `/dev/mapper/control` exists.
    pub control_present: bool,
    /// dm ioctl interface version, when device-mapper answers.
    pub driver_version: Option<String>,
    /// thin-pool target version, when the target is loaded.
    pub thin_pool_version: Option<String>,
    /// The running kernel ships dm-thin-pool as a module that is not loaded yet.
    pub thin_pool_module_available: bool,
    /// Why dm-thin cannot be used, in one sentence (None when it can).
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemReport {
    pub overlay: bool,
    pub aufs: bool,
    pub btrfs: bool,
    pub xfs: bool,
    pub ext4: bool,
    pub zfs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootReport {
    pub path: PathBuf,
    /// The directory actually probed (the root or its nearest existing parent).
    pub probed: PathBuf,
    /// Backing filesystem name as Docker prints it (`xfs`, `extfs`, `btrfs`, `tmpfs`...).
    pub backing_filesystem: String,
    /// readdir reports file types (overlay needs it; xfs with ftype=0 lacks it).
    pub d_type: Option<bool>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// The driver to use, or None when no driver can work.
    pub driver: Option<String>,
    pub reason: String,
}

impl HostReport {
    /// Probes the host for a store rooted at `root`.
    pub fn probe(root: &Path) -> HostReport {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let device_mapper = probe_device_mapper(&kernel);
        let filesystems = probe_filesystems();
        let root_report = probe_root(root);
        let existing_stores = existing_stores(root);
        let mut report = HostReport {
            kernel,
            device_mapper,
            filesystems,
            root: root_report,
            udev_running: udev_running(),
            existing_stores,
            recommendation: Recommendation {
                driver: None,
                reason: String::new(),
            },
        };
        report.recommendation = recommend(&report);
        report
    }

    /// True when dm-thin pools can be built right now.
    pub fn dm_thin_usable(&self) -> bool {
        self.device_mapper.problem.is_none()
    }

    /// True when overlay2 can run on this root.
    pub fn overlay_usable(&self) -> bool {
        self.filesystems.overlay
            && self.root.d_type == Some(true)
            && !OVERLAY_INCOMPATIBLE.contains(&self.root.backing_filesystem.as_str())
    }
}

/// Backing filesystems overlay cannot use as its upper (Docker's list).
pub const OVERLAY_INCOMPATIBLE: &[&str] = &["overlayfs", "aufs", "zfs", "ecryptfs"];

/// Docker's preference: an existing store first, then overlay2, then
/// devicemapper where dm-thin exists (CentOS/RHEL without overlay2), btrfs
/// on a btrfs root, vfs last. Stores of several drivers under one root are
/// not resolved by guessing (as Docker refuses them too): layers stored by
/// one driver are not visible to another, so the admin must pick.
pub fn recommend(report: &HostReport) -> Recommendation {
    match report.existing_stores.as_slice() {
        [] => {}
        [existing] => {
            return Recommendation {
                driver: Some(existing.clone()),
                reason: format!(
                    "a {existing} store with layers already exists under {}; another driver would not see its layers",
                    report.root.path.display()
                ),
            };
        }
        several => {
            return Recommendation {
                driver: None,
                reason: format!(
                    "{} holds layers of several drivers ({}); layers stored by one driver are not visible to another, so choose one with --driver",
                    report.root.path.display(),
                    several.join(", ")
                ),
            };
        }
    }
    if report.overlay_usable() {
        return Recommendation {
            driver: Some("overlay2".into()),
            reason: format!(
                "overlay is in the kernel and {} ({}) supports d_type",
                report.root.probed.display(),
                report.root.backing_filesystem
            ),
        };
    }
    let why_not_overlay = if !report.filesystems.overlay {
        "the kernel has no overlay filesystem".to_string()
    } else if report.root.d_type != Some(true) {
        format!(
            "{} ({}) does not support d_type, which overlay needs",
            report.root.probed.display(),
            report.root.backing_filesystem
        )
    } else {
        format!(
            "overlay cannot be stacked on {}",
            report.root.backing_filesystem
        )
    };
    if report.dm_thin_usable() {
        return Recommendation {
            driver: Some("devicemapper".into()),
            reason: format!("{why_not_overlay}; device-mapper thin provisioning is available"),
        };
    }
    if report.root.backing_filesystem == "btrfs" && report.filesystems.btrfs {
        return Recommendation {
            driver: Some("btrfs".into()),
            reason: format!("{why_not_overlay}; the root is on btrfs"),
        };
    }
    if report.root.error.is_none() {
        return Recommendation {
            driver: Some("vfs".into()),
            reason: format!(
                "{why_not_overlay}, device-mapper is unusable ({}), and the root is not on btrfs: vfs works everywhere but copies every layer in full",
                report.device_mapper.problem.as_deref().unwrap_or("unknown")
            ),
        };
    }
    Recommendation {
        driver: None,
        reason: format!(
            "no driver can work: {why_not_overlay}, and the root is unusable ({})",
            report.root.error.as_deref().unwrap_or("unknown")
        ),
    }
}

fn probe_device_mapper(kernel: &str) -> DeviceMapperReport {
    let control_present = Path::new(crate::dm::control::CONTROL_PATH).exists();
    let thin_pool_module_available = kernel_module_available(kernel, "dm-thin-pool");
    let mut report = DeviceMapperReport {
        control_present,
        driver_version: None,
        thin_pool_version: None,
        thin_pool_module_available,
        problem: None,
    };
    match DmControl::open() {
        Err(e) => {
            report.problem = Some(if control_present {
                e.to_string()
            } else {
                "device-mapper is missing: /dev/mapper/control does not exist on this kernel"
                    .to_string()
            });
        }
        Ok(dm) => {
            report.driver_version = dm.driver_version().ok().map(fmt_version);
            match dm.thin_pool_version() {
                Ok(v) => report.thin_pool_version = Some(fmt_version(v)),
                Err(_) if thin_pool_module_available => {
                    report.problem = Some(
                        "the thin-pool target is not loaded; `modprobe dm_thin_pool` loads it"
                            .to_string(),
                    )
                }
                Err(e) => report.problem = Some(e.to_string()),
            }
        }
    }
    report
}

fn fmt_version((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

fn kernel_module_available(kernel: &str, module: &str) -> bool {
    let dir = Path::new("/lib/modules").join(kernel);
    let file = format!("/{module}.ko");
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        fs::read_to_string(dir.join(f))
            .map(|s| {
                s.lines()
                    .any(|l| l.split(':').next().is_some_and(|p| p.contains(&file)))
            })
            .unwrap_or(false)
    })
}

fn probe_filesystems() -> FilesystemReport {
    let list = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has = |name: &str| {
        list.lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    FilesystemReport {
        overlay: has("overlay"),
        aufs: has("aufs"),
        btrfs: has("btrfs"),
        xfs: has("xfs"),
        ext4: has("ext4"),
        zfs: has("zfs"),
    }
}

fn probe_root(root: &Path) -> RootReport {
    let probed = nearest_existing(root);
    let backing_filesystem = match nix::sys::statfs::statfs(&probed) {
        Ok(st) => fs_name(st.filesystem_type().0),
        Err(e) => format!("unknown ({e})"),
    };
    let (d_type, error) = match supports_d_type(&probed) {
        Ok(v) => (Some(v), None),
        Err(e) => (
            None,
            Some(format!("cannot write in {}: {e}", probed.display())),
        ),
    };
    RootReport {
        path: root.to_path_buf(),
        probed,
        backing_filesystem,
        d_type,
        error,
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Docker's names for backing filesystems (`graphdriver.FsNames`).
pub fn fs_name(magic: i64) -> String {
    match magic {
        0x5846_5342 => "xfs",
        0xEF53 => "extfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6174_6673 => "aufs",
        0x2FC1_2FC1 => "zfs",
        0x0102_1997 => "v9fs",
        0x5346_544E => "ntfs",
        0x6969 => "nfs",
        0x858458F6 => "ramfs",
        0x7371_7368 => "squashfs",
        other => return format!("unknown (0x{other:x})"),
    }
    .to_string()
}

/// Creates a file in a temp dir under `dir` and checks that readdir reports
/// its type (`DT_REG`), which overlay needs for whiteouts.
pub fn supports_d_type(dir: &Path) -> io::Result<bool> {
    let tmp = tempdir_in(dir)?;
    let result = (|| {
        fs::write(tmp.join("d_type-probe"), b"")?;
        let mut d = nix::dir::Dir::open(
            &tmp,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )?;
        for entry in d.iter() {
            let entry = entry?;
            if entry.file_name().to_bytes() == b"d_type-probe" {
                return Ok(entry.file_type().is_some());
            }
        }
        Err(io::Error::other("probe file vanished"))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn tempdir_in(dir: &Path) -> io::Result<PathBuf> {
    let p = dir.join(format!(".thinsnap-probe-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir(&p)?;
    Ok(p)
}

fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

/// Backends with layers under `root`, in the chooser's priority order.
/// A backend's directory counts when it holds a layer (an entry named like
/// a layer id; overlay2's `l/` link directory and thinsnap's dot-dirs are
/// not layers), so a store that was only opened does not count.
pub fn existing_stores(root: &Path) -> Vec<String> {
    const MARKERS: &[(&str, &str)] = &[
        ("overlay2", "overlay2"),
        ("devicemapper", "devicemapper/metadata"),
        ("btrfs", "btrfs/subvolumes"),
        ("aufs", "aufs/layers"),
        ("overlay", "overlay"),
        ("vfs", "vfs/dir"),
    ];
    MARKERS
        .iter()
        .filter(|(name, marker)| has_layer_entries(&root.join(marker), *name == "overlay2"))
        .map(|(name, _)| name.to_string())
        .collect()
}

fn has_layer_entries(path: &Path, skip_link_dir: bool) -> bool {
    fs::read_dir(path)
        .map(|it| {
            it.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                crate::snapshot::LayerId::new(&name).is_ok() && !(skip_link_dir && name == "l")
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        overlay: bool,
        d_type: Option<bool>,
        dm_problem: Option<&str>,
        fs: &str,
    ) -> HostReport {
        HostReport {
            kernel: "6.1".into(),
            device_mapper: DeviceMapperReport {
                control_present: dm_problem.is_none(),
                driver_version: None,
                thin_pool_version: None,
                thin_pool_module_available: false,
                problem: dm_problem.map(String::from),
            },
            filesystems: FilesystemReport {
                overlay,
                aufs: false,
                btrfs: true,
                xfs: true,
                ext4: true,
                zfs: false,
            },
            root: RootReport {
                path: "/var/lib/thinsnap".into(),
                probed: "/var/lib".into(),
                backing_filesystem: fs.into(),
                d_type,
                error: None,
            },
            udev_running: false,
            existing_stores: vec![],
            recommendation: Recommendation {
                driver: None,
                reason: String::new(),
            },
        }
    }

    #[test]
    fn prefers_overlay2_then_devicemapper_then_btrfs_then_vfs() {
        let r = report(true, Some(true), None, "xfs");
        assert_eq!(recommend(&r).driver.as_deref(), Some("overlay2"));
        let r = report(true, Some(false), None, "xfs");
        let rec = recommend(&r);
        assert_eq!(rec.driver.as_deref(), Some("devicemapper"));
        assert!(rec.reason.contains("d_type"), "{}", rec.reason);
        let r = report(false, Some(true), Some("no dm"), "btrfs");
        assert_eq!(recommend(&r).driver.as_deref(), Some("btrfs"));
        let r = report(false, Some(true), Some("no dm"), "extfs");
        assert_eq!(recommend(&r).driver.as_deref(), Some("vfs"));
    }

    #[test]
    fn existing_store_wins_and_several_are_not_guessed() {
        let mut r = report(true, Some(true), None, "xfs");
        r.existing_stores = vec!["devicemapper".into()];
        let rec = recommend(&r);
        assert_eq!(rec.driver.as_deref(), Some("devicemapper"));
        assert!(rec.reason.contains("already exists"), "{}", rec.reason);
        r.existing_stores = vec!["devicemapper".into(), "overlay2".into()];
        let rec = recommend(&r);
        assert_eq!(rec.driver, None);
        assert!(rec.reason.contains("not visible"), "{}", rec.reason);
        assert!(
            rec.reason.contains("devicemapper, overlay2"),
            "{}",
            rec.reason
        );
        assert!(rec.reason.contains("--driver"), "{}", rec.reason);
    }

    #[test]
    fn overlay_is_not_recommended_on_incompatible_filesystems() {
        let r = report(true, Some(true), Some("no dm"), "overlayfs");
        let rec = recommend(&r);
        assert_eq!(rec.driver.as_deref(), Some("vfs"));
        assert!(rec.reason.contains("overlayfs"), "{}", rec.reason);
    }

    #[test]
    fn no_driver_when_root_unusable() {
        let mut r = report(false, None, Some("no dm"), "extfs");
        r.root.error = Some("read-only".into());
        assert!(recommend(&r).driver.is_none());
    }

    #[test]
    fn d_type_probe_on_tmp() {
        let dir = tempfile::tempdir().unwrap();
        assert!(supports_d_type(dir.path()).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn detects_existing_stores() {
        let dir = tempfile::tempdir().unwrap();
        assert!(existing_stores(dir.path()).is_empty());
        fs::create_dir_all(dir.path().join("devicemapper/metadata")).unwrap();
        fs::write(dir.path().join("devicemapper/metadata/base"), b"{}").unwrap();
        assert_eq!(existing_stores(dir.path()), ["devicemapper"]);
        // An opened but empty overlay2 store (l/ and .thinsnap/) has no layers.
        fs::create_dir_all(dir.path().join("overlay2/l")).unwrap();
        fs::create_dir_all(dir.path().join("overlay2/.thinsnap/tmp")).unwrap();
        assert_eq!(existing_stores(dir.path()), ["devicemapper"]);
        fs::create_dir_all(dir.path().join("overlay2/abc/diff")).unwrap();
        assert_eq!(existing_stores(dir.path()), ["overlay2", "devicemapper"]);
    }
}
