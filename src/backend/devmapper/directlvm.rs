//! direct-lvm: what Docker automated with `dm.directlvm_device`. On first
//! start a blank block device becomes the PV of VG `docker`, whose LVs
//! `thinpool` (data, `dm.thinp_percent` of the VG) and `thinpoolmeta`
//! (`dm.thinp_metapercent`) are converted into a thin pool with 512 KiB
//! chunks and zeroing off; the lvm profile `docker-thinpool` carries the
//! autoextend threshold and percent, and monitoring is switched on. The
//! pool is then used as `dm.thinpooldev=docker-thinpool`.
//!
//! The given settings are recorded in `<home>/setup-config.json` (Docker's
//! file and field names); a later start with different settings is
//! refused, the same settings are a no-op (the pool is activated if a
//! reboot left it inactive).
//!
//! Crash safety: before the first lvm command, `<home>/thinsnap/
//! directlvm-setup.json` records that the device was checked blank and is
//! being set up. A start that finds this mark (an interrupted setup) takes
//! down what the interrupted run built on that device and starts over;
//! the mark goes only after `setup-config.json` is written, so the pool is
//! never used before its setup completed.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DevmapperError;
use super::lvm::{self, Lvm};
use super::options::DirectLvm;
use crate::failpoint;
use crate::fsutil;

type Res<T> = Result<T, DevmapperError>;

pub const VG: &str = "docker";
pub const DATA_LV: &str = "thinpool";
pub const META_LV: &str = "thinpoolmeta";
/// The pool's device-mapper name (`<vg>-<lv>`).
pub const POOL_NAME: &str = "docker-thinpool";
pub const PROFILE: &str = "docker-thinpool";
pub const PROFILE_DIR: &str = "/etc/lvm/profile";

pub const DEFAULT_THINP_PERCENT: u64 = 95;
pub const DEFAULT_THINP_METAPERCENT: u64 = 1;
pub const DEFAULT_AUTOEXTEND_THRESHOLD: u64 = 80;
pub const DEFAULT_AUTOEXTEND_PERCENT: u64 = 20;

/// Tools direct-lvm needs (thin_check: lvm refuses to activate a thin
/// pool without it).
pub const REQUIRED_TOOLS: &[&str] = &[
    "pvcreate",
    "vgcreate",
    "lvcreate",
    "lvconvert",
    "lvchange",
    "thin_check",
];

pub const FAILPOINTS: &[&str] = &[
    "directlvm.after_mark",
    "directlvm.after_pvcreate",
    "directlvm.after_vgcreate",
    "directlvm.after_data_lv",
    "directlvm.after_meta_lv",
    "directlvm.after_convert",
    "directlvm.after_profile",
    "directlvm.after_config",
];

fn fp(name: &'static str) -> Res<()> {
    failpoint::hit(name).map_err(|e| DevmapperError::Other(e.to_string()))
}

/// `setup-config.json`: the settings as the user gave them (0 = not given),
/// with Docker's field names and order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupConfig {
    #[serde(rename = "Device")]
    pub device: String,
    #[serde(rename = "ThinpPercent")]
    pub thinp_percent: u64,
    #[serde(rename = "ThinpMetaPercent")]
    pub thinp_metapercent: u64,
    #[serde(rename = "AutoExtendPercent")]
    pub autoextend_percent: u64,
    #[serde(rename = "AutoExtendThreshold")]
    pub autoextend_threshold: u64,
}

impl SetupConfig {
    pub fn from_options(o: &DirectLvm) -> SetupConfig {
        SetupConfig {
            device: o.device.clone(),
            thinp_percent: o.thinp_percent.unwrap_or(0),
            thinp_metapercent: o.thinp_metapercent.unwrap_or(0),
            autoextend_percent: o.autoextend_percent.unwrap_or(0),
            autoextend_threshold: o.autoextend_threshold.unwrap_or(0),
        }
    }

    /// The values in force: Docker's defaults where 0.
    pub fn effective(&self) -> SetupConfig {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        SetupConfig {
            device: self.device.clone(),
            thinp_percent: or(self.thinp_percent, DEFAULT_THINP_PERCENT),
            thinp_metapercent: or(self.thinp_metapercent, DEFAULT_THINP_METAPERCENT),
            autoextend_percent: or(self.autoextend_percent, DEFAULT_AUTOEXTEND_PERCENT),
            autoextend_threshold: or(self.autoextend_threshold, DEFAULT_AUTOEXTEND_THRESHOLD),
        }
    }

    /// The lvm profile text, exactly as Docker writes it.
    pub fn profile_text(&self) -> String {
        let e = self.effective();
        format!(
            "activation{{\nthin_pool_autoextend_threshold={}\nthin_pool_autoextend_percent={}\n}}",
            e.autoextend_threshold, e.autoextend_percent
        )
    }
}

pub fn config_path(home: &Path) -> PathBuf {
    home.join("setup-config.json")
}

fn mark_path(home: &Path) -> PathBuf {
    home.join("thinsnap").join("directlvm-setup.json")
}

/// The recorded config; a missing or empty file is none (Docker's rule).
pub fn load_config(home: &Path) -> Res<Option<SetupConfig>> {
    read_json(&config_path(home))
}

fn read_json(path: &Path) -> Res<Option<SetupConfig>> {
    match fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            DevmapperError::Other(format!(
                "{} is not a direct-lvm config ({e}); it records how the pool was set up: restore it or move it aside to set up again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DevmapperError::io(format!("reading {}", path.display()), e)),
    }
}

fn write_json(path: &Path, cfg: &SetupConfig) -> Res<()> {
    let bytes = serde_json::to_vec(cfg).map_err(|e| DevmapperError::Other(e.to_string()))?;
    fsutil::atomic_write(path, &bytes, 0o600)
        .map_err(|e| DevmapperError::io(format!("writing {}", path.display()), e))
}

/// Sets up (first start) or checks and activates (later starts) the
/// direct-lvm pool; returns the pool's device-mapper name.
pub fn ensure(home: &Path, opts: &DirectLvm) -> Res<String> {
    let given = SetupConfig::from_options(opts);
    let lvm = Lvm::detect();
    if let Some(stored) = load_config(home)? {
        if stored != given {
            return Err(DevmapperError::Other(format!(
                "changing direct-lvm config is not supported: {} records {}, this start gives {}. To use the new settings, remove the store and the VG {VG} first (all layers are lost); to keep the store, start with the recorded settings",
                config_path(home).display(),
                describe(&stored),
                describe(&given)
            )));
        }
        activate(&lvm)?;
        return Ok(POOL_NAME.to_string());
    }
    let _span = tracing::info_span!("directlvm_setup", device = %given.device).entered();
    let mark = mark_path(home);
    match read_json(&mark)? {
        Some(started) if started.device == given.device => {
            tracing::warn!(device = %given.device,
                "an earlier direct-lvm setup of this device was interrupted; taking down what it built and starting over");
            undo_partial(&lvm, &given.device)?;
        }
        Some(started) => {
            return Err(DevmapperError::Other(format!(
                "an interrupted direct-lvm setup of {} is recorded in {}; this start names {}. Start with dm.directlvm_device={} to finish it, or check that device and remove the file",
                started.device,
                mark.display(),
                given.device,
                started.device
            )));
        }
        None => {
            verify_device(&lvm, &given.device, opts.force)?;
            if let Some(dir) = mark.parent() {
                fsutil::ensure_dir(dir, 0o700)
                    .map_err(|e| DevmapperError::io(format!("creating {}", dir.display()), e))?;
            }
            write_json(&mark, &given)?;
        }
    }
    fp("directlvm.after_mark")?;
    setup(&lvm, &given)?;
    write_json(&config_path(home), &given)?;
    fp("directlvm.after_config")?;
    fsutil::remove_durable(&mark)
        .map_err(|e| DevmapperError::io(format!("removing {}", mark.display()), e))?;
    tracing::info!(device = %given.device, pool = POOL_NAME, "direct-lvm thin pool set up");
    Ok(POOL_NAME.to_string())
}

fn describe(c: &SetupConfig) -> String {
    format!(
        "device {} thinp_percent {} thinp_metapercent {} autoextend_threshold {} autoextend_percent {} (0 = default)",
        c.device,
        c.thinp_percent,
        c.thinp_metapercent,
        c.autoextend_threshold,
        c.autoextend_percent
    )
}

/// Activates the pool LV when a reboot (or `vgchange -an`) left it inactive.
fn activate(lvm: &Lvm) -> Res<()> {
    if Path::new("/sys/block")
        .read_dir()
        .map_err(|e| DevmapperError::io("listing /sys/block", e))?
        .flatten()
        .any(|e| fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == POOL_NAME))
    {
        return Ok(());
    }
    tracing::info!(pool = POOL_NAME, "activating the direct-lvm thin pool");
    lvm.run("lvchange", &["-ay", &format!("{VG}/{DATA_LV}")])
        .map(|_| ())
}

/// Docker's checks, and more: a block device lvm can use, not a PV of any
/// VG, and no signature (filesystem, partition table, PV, RAID...) unless
/// forced, in which case the signatures are wiped.
fn verify_device(lvm: &Lvm, dev: &str, force: bool) -> Res<()> {
    let meta = fs::metadata(dev).map_err(|e| {
        DevmapperError::io(
            format!("{dev} is not available for use with devicemapper"),
            e,
        )
    })?;
    if !meta.file_type().is_block_device() {
        return Err(DevmapperError::Other(format!(
            "{dev} is not available for use with devicemapper: not a block device"
        )));
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|t| !lvm::on_path(t))
        .collect();
    if !missing.is_empty() {
        return Err(DevmapperError::Other(format!(
            "direct-lvm needs {} which are not installed (Debian/Ubuntu: apt-get install lvm2 thin-provisioning-tools; RHEL/CentOS: yum install lvm2 device-mapper-persistent-data)",
            missing.join(", ")
        )));
    }
    if let Some(vg) = lvm.pv_vg(dev)?
        && !vg.is_empty()
    {
        return Err(DevmapperError::Other(format!(
            "{dev} is already part of a volume group {vg:?}: remove it from that VG (vgreduce) or name another device"
        )));
    }
    let signatures = signatures(dev)?;
    if !signatures.is_empty() {
        if !force {
            return Err(DevmapperError::Other(format!(
                "{dev} has a filesystem already ({}), use dm.directlvm_device_force=true (or --force) if you want to wipe the device",
                signatures.join(", ")
            )));
        }
        tracing::warn!(device = dev, found = %signatures.join(", "), "wiping signatures (forced)");
        super::fs::run_tool("wipefs", &["--all", dev], Path::new(dev))?;
    }
    Ok(())
}

/// Signature types on `dev` (`wipefs` lists filesystems, partition
/// tables, LVM2_member, RAID... without changing anything).
pub fn signatures(dev: &str) -> Res<Vec<String>> {
    let out = super::fs::run_tool(
        "wipefs",
        &["--no-act", "--noheadings", "--output", "TYPE", dev],
        Path::new(dev),
    )?;
    let mut v: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.dedup();
    Ok(v)
}

/// Removes what an interrupted setup built on `dev`: VG `docker` if `dev`
/// holds it, and the PV label.
fn undo_partial(lvm: &Lvm, dev: &str) -> Res<()> {
    match lvm.pv_vg(dev)? {
        Some(vg) if vg == VG => {
            let _ = lvm.run("vgchange", &["-an", VG]);
            lvm.run("vgremove", &["-ff", "-y", VG])?;
            lvm.run("pvremove", &["-ff", "-y", dev])?;
        }
        Some(vg) if vg.is_empty() => {
            lvm.run("pvremove", &["-ff", "-y", dev])?;
        }
        Some(vg) => {
            return Err(DevmapperError::Other(format!(
                "{dev} belongs to volume group {vg:?}, not to the {VG} an interrupted setup was building: refusing to touch it"
            )));
        }
        None => {}
    }
    Ok(())
}

fn setup(lvm: &Lvm, given: &SetupConfig) -> Res<()> {
    let e = given.effective();
    let task = crate::progress::task("setting up the direct-lvm thin pool", Some(7));
    let dev = e.device.as_str();
    let step = |n: u64, msg: &str| {
        task.set(n);
        task.message(msg);
    };
    step(0, "pvcreate");
    lvm.run("pvcreate", &["-f", dev])?;
    fp("directlvm.after_pvcreate")?;
    step(1, "vgcreate");
    lvm.run("vgcreate", &[VG, dev])?;
    fp("directlvm.after_vgcreate")?;
    step(2, "lvcreate thinpool");
    let data_extents = format!("{}%VG", e.thinp_percent);
    lvm.run(
        "lvcreate",
        &[
            "--wipesignatures",
            "y",
            "-n",
            DATA_LV,
            VG,
            "--extents",
            &data_extents,
        ],
    )?;
    fp("directlvm.after_data_lv")?;
    step(3, "lvcreate thinpoolmeta");
    let meta_extents = format!("{}%VG", e.thinp_metapercent);
    lvm.run(
        "lvcreate",
        &[
            "--wipesignatures",
            "y",
            "-n",
            META_LV,
            VG,
            "--extents",
            &meta_extents,
        ],
    )?;
    fp("directlvm.after_meta_lv")?;
    step(4, "lvconvert");
    lvm.run(
        "lvconvert",
        &[
            "-y",
            "--zero",
            "n",
            "-c",
            "512K",
            "--thinpool",
            &format!("{VG}/{DATA_LV}"),
            "--poolmetadata",
            &format!("{VG}/{META_LV}"),
        ],
    )?;
    fp("directlvm.after_convert")?;
    step(5, "lvm profile");
    fsutil::ensure_dir(Path::new(PROFILE_DIR), 0o755)
        .map_err(|err| DevmapperError::io(format!("creating {PROFILE_DIR}"), err))?;
    let profile = Path::new(PROFILE_DIR).join(format!("{PROFILE}.profile"));
    fsutil::atomic_write(&profile, given.profile_text().as_bytes(), 0o600)
        .map_err(|err| DevmapperError::io(format!("writing {}", profile.display()), err))?;
    fp("directlvm.after_profile")?;
    lvm.run(
        "lvchange",
        &["--metadataprofile", PROFILE, &format!("{VG}/{DATA_LV}")],
    )?;
    step(6, "monitoring");
    // dmeventd extends the pool by the profile's policy; without it,
    // `thinsnap pool autoextend --watch` does the same job.
    if let Err(err) = lvm.run("lvchange", &["--monitor", "y", &format!("{VG}/{DATA_LV}")]) {
        tracing::warn!(error = %err,
            "could not switch on dmeventd monitoring of docker/thinpool; run `thinsnap pool autoextend --watch 10` (or start dm-event.service) so the pool grows by its profile");
    }
    task.finish("direct-lvm thin pool docker/thinpool ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_config_uses_docker_names_and_zeros() {
        let c = SetupConfig::from_options(&DirectLvm {
            device: "/dev/vdb".into(),
            force: true,
            thinp_percent: Some(90),
            thinp_metapercent: Some(2),
            autoextend_threshold: None,
            autoextend_percent: Some(30),
        });
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"Device":"/dev/vdb","ThinpPercent":90,"ThinpMetaPercent":2,"AutoExtendPercent":30,"AutoExtendThreshold":0}"#
        );
        let e = c.effective();
        assert_eq!(e.autoextend_threshold, 80);
        assert_eq!(e.autoextend_percent, 30);
        assert_eq!(
            c.profile_text(),
            "activation{\nthin_pool_autoextend_threshold=80\nthin_pool_autoextend_percent=30\n}"
        );
        let d = SetupConfig {
            device: "/dev/x".into(),
            ..Default::default()
        }
        .effective();
        assert_eq!(
            (d.thinp_percent, d.thinp_metapercent),
            (DEFAULT_THINP_PERCENT, DEFAULT_THINP_METAPERCENT)
        );
    }

    #[test]
    fn empty_or_missing_config_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_config(dir.path()).unwrap(), None);
        fs::write(config_path(dir.path()), "").unwrap();
        assert_eq!(load_config(dir.path()).unwrap(), None);
        fs::write(config_path(dir.path()), "{nope").unwrap();
        let e = load_config(dir.path()).unwrap_err().to_string();
        assert!(e.contains("setup-config.json"), "{e}");
        let c = SetupConfig {
            device: "/dev/vdb".into(),
            ..Default::default()
        };
        write_json(&config_path(dir.path()), &c).unwrap();
        assert_eq!(load_config(dir.path()).unwrap(), Some(c));
    }

    #[test]
    fn a_changed_config_is_refused_before_any_lvm_command() {
        let dir = tempfile::tempdir().unwrap();
        write_json(
            &config_path(dir.path()),
            &SetupConfig {
                device: "/dev/vdb".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let e = ensure(
            dir.path(),
            &DirectLvm {
                device: "/dev/vdc".into(),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("devmapper: changing direct-lvm config is not supported"),
            "{e}"
        );
        assert!(e.contains("/dev/vdb") && e.contains("/dev/vdc"), "{e}");
    }
}
