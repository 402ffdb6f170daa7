//! Docker's `dm.*` storage options, with Docker's names, value syntax,
//! defaults and error texts. Keys are case-insensitive; an unknown or
//! malformed option is an error naming it.

use crate::units::{Bytes, Sectors, parse_size};

pub const DEFAULT_BASE_SIZE: Bytes = Bytes(10 << 30);
pub const DEFAULT_DATA_LOOP_SIZE: Bytes = Bytes(100 << 30);
pub const DEFAULT_META_LOOP_SIZE: Bytes = Bytes(2 << 30);
pub const DEFAULT_BLOCK_SIZE: Sectors = Sectors(128);
pub const DEFAULT_MIN_FREE_SPACE_PERCENT: u32 = 10;
/// Low water mark Docker passes to every pool it creates (in blocks).
pub const DEFAULT_LOW_WATER_MARK: u64 = 32768;

/// Where the layer's files live inside its thin filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Docker's: the filesystem holds an `id` file and `rootfs/`.
    Docker,
    /// containerd's: the filesystem root is the layer root.
    Flat,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Docker => "docker",
            Layout::Flat => "flat",
        }
    }
}

/// direct-lvm settings (`dm.directlvm_device` and `dm.thinp_*`), as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectLvm {
    pub device: String,
    pub force: bool,
    pub thinp_percent: Option<u64>,
    pub thinp_metapercent: Option<u64>,
    pub autoextend_threshold: Option<u64>,
    pub autoextend_percent: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmStoreOptions {
    pub base_size: Bytes,
    /// True when `dm.basesize` was given (only then is the base grown).
    pub user_base_size: bool,
    pub loop_data_size: Bytes,
    pub loop_meta_size: Bytes,
    /// `xfs` or `ext4`; None = Docker's default choice.
    pub fs: Option<String>,
    pub mkfs_args: Vec<String>,
    pub mount_opts: Vec<String>,
    pub data_device: Option<String>,
    pub metadata_device: Option<String>,
    pub thin_pool_device: Option<String>,
    pub blkdiscard: Option<bool>,
    pub block_size: Sectors,
    pub override_udev_sync_check: bool,
    pub use_deferred_removal: Option<bool>,
    pub use_deferred_deletion: Option<bool>,
    pub min_free_space_percent: u32,
    pub xfs_nospace_max_retries: Option<String>,
    pub direct_lvm: Option<DirectLvm>,
    pub libdm_log_level: u32,
    /// None: keep the store's recorded layout (Docker's for a new store).
    pub layout: Option<Layout>,
    /// `thinsnap.error_if_no_space`: a full pool fails writes with ENOSPC
    /// at once instead of queueing them (the kernel's default, which
    /// hangs containers for `no_space_timeout`). None: leave the pool as
    /// it is (Docker's table for a new pool).
    pub error_if_no_space: Option<bool>,
}

impl Default for DmStoreOptions {
    fn default() -> Self {
        DmStoreOptions {
            base_size: DEFAULT_BASE_SIZE,
            user_base_size: false,
            loop_data_size: DEFAULT_DATA_LOOP_SIZE,
            loop_meta_size: DEFAULT_META_LOOP_SIZE,
            fs: None,
            mkfs_args: Vec::new(),
            mount_opts: Vec::new(),
            data_device: None,
            metadata_device: None,
            thin_pool_device: None,
            blkdiscard: None,
            block_size: DEFAULT_BLOCK_SIZE,
            override_udev_sync_check: false,
            use_deferred_removal: None,
            use_deferred_deletion: None,
            min_free_space_percent: DEFAULT_MIN_FREE_SPACE_PERCENT,
            xfs_nospace_max_retries: None,
            direct_lvm: None,
            libdm_log_level: 2,
            layout: None,
            error_if_no_space: None,
        }
    }
}

/// A refused option; the message is Docker's where Docker has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

fn size(key: &str, value: &str) -> Result<Bytes, OptionError> {
    parse_size(value).map_err(|e| {
        OptionError(format!(
            "devmapper: invalid value {value:?} for option {key}: {e}"
        ))
    })
}

fn boolean(key: &str, value: &str) -> Result<bool, OptionError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(OptionError(format!(
            "devmapper: invalid value {value:?} for option {key}: expected true or false"
        ))),
    }
}

fn percent(key: &str, value: &str) -> Result<u64, OptionError> {
    let v: u64 = value.trim_end_matches('%').parse().map_err(|_| {
        OptionError(format!(
            "devmapper: invalid value {value:?} for option {key}: expected a percentage"
        ))
    })?;
    if v >= 100 && (key == "dm.thinp_percent" || key == "dm.thinp_metapercent") {
        return Err(OptionError(format!(
            "{key} must be greater than 0 and less than 100"
        )));
    }
    if v > 100 {
        return Err(OptionError(format!(
            "{key} must be greater than 0 and less than 100"
        )));
    }
    Ok(v)
}

impl DmStoreOptions {
    /// Parses `key=value` options.
    pub fn parse(options: &[String]) -> Result<DmStoreOptions, OptionError> {
        let mut o = DmStoreOptions::default();
        let mut lvm = DirectLvm::default();
        let mut lvm_given = false;
        for opt in options {
            let (key, value) = opt.split_once('=').ok_or_else(|| {
                OptionError(format!(
                    "devmapper: option {opt:?} is not of the form key=value"
                ))
            })?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "dm.basesize" => {
                    o.base_size = size(&key, value)?;
                    o.user_base_size = true;
                }
                "dm.loopdatasize" => o.loop_data_size = size(&key, value)?,
                "dm.loopmetadatasize" => o.loop_meta_size = size(&key, value)?,
                "dm.fs" => match value {
                    "xfs" | "ext4" => o.fs = Some(value.to_string()),
                    _ => {
                        return Err(OptionError(format!(
                            "devmapper: Unsupported filesystem {value}"
                        )));
                    }
                },
                "dm.mkfsarg" => o.mkfs_args.push(value.to_string()),
                "dm.mountopt" | "devicemapper.mountopt" => o.mount_opts.push(value.to_string()),
                "dm.datadev" => o.data_device = Some(value.to_string()),
                "dm.metadatadev" => o.metadata_device = Some(value.to_string()),
                "dm.thinpooldev" => {
                    o.thin_pool_device = Some(value.trim_start_matches("/dev/mapper/").to_string())
                }
                "dm.blkdiscard" => o.blkdiscard = Some(boolean(&key, value)?),
                "dm.blocksize" => {
                    let b = size(&key, value)?;
                    // The kernel takes 64 KiB .. 1 GiB in multiples of 64 KiB.
                    if b.0 < 65536 || b.0 > (1 << 30) || b.0 % 65536 != 0 {
                        return Err(OptionError(format!(
                            "devmapper: invalid value {value:?} for option dm.blocksize: the pool block size must be a multiple of 64K between 64K and 1G"
                        )));
                    }
                    o.block_size = b.sectors();
                }
                "dm.override_udev_sync_check" => o.override_udev_sync_check = boolean(&key, value)?,
                "dm.use_deferred_removal" => o.use_deferred_removal = Some(boolean(&key, value)?),
                "dm.use_deferred_deletion" => o.use_deferred_deletion = Some(boolean(&key, value)?),
                "dm.min_free_space" => {
                    let Some(num) = value.strip_suffix('%') else {
                        return Err(OptionError(
                            "devmapper: Option dm.min_free_space requires % suffix".into(),
                        ));
                    };
                    let pct: u32 = num.parse().map_err(|_| {
                        OptionError(format!(
                            "devmapper: Invalid value {value} for option dm.min_free_space"
                        ))
                    })?;
                    if pct >= 100 {
                        return Err(OptionError(format!(
                            "devmapper: Invalid value {value} for option dm.min_free_space"
                        )));
                    }
                    o.min_free_space_percent = pct;
                }
                "dm.xfs_nospace_max_retries" => {
                    value.parse::<u64>().map_err(|_| {
                        OptionError(format!("devmapper: invalid value {value:?} for option dm.xfs_nospace_max_retries: expected a non-negative integer"))
                    })?;
                    o.xfs_nospace_max_retries = Some(value.to_string());
                }
                "dm.directlvm_device" => {
                    lvm_given = true;
                    lvm.device = value.to_string();
                }
                "dm.directlvm_device_force" => lvm.force = boolean(&key, value)?,
                "dm.thinp_percent" => {
                    lvm_given = true;
                    lvm.thinp_percent = Some(percent(&key, value)?);
                }
                "dm.thinp_metapercent" => {
                    lvm_given = true;
                    lvm.thinp_metapercent = Some(percent(&key, value)?);
                }
                "dm.thinp_autoextend_threshold" => {
                    lvm_given = true;
                    lvm.autoextend_threshold = Some(percent(&key, value)?);
                }
                "dm.thinp_autoextend_percent" => {
                    lvm_given = true;
                    lvm.autoextend_percent = Some(percent(&key, value)?);
                }
                "dm.libdm_log_level" => {
                    let level: u32 = value.parse().map_err(|_| {
                        OptionError(format!(
                            "devmapper: invalid value {value:?} for option dm.libdm_log_level"
                        ))
                    })?;
                    if !(2..=7).contains(&level) {
                        return Err(OptionError(
                            "dm.libdm_log_level must be in range [2,7]".into(),
                        ));
                    }
                    o.libdm_log_level = level;
                }
                "thinsnap.layout" => {
                    o.layout = match value {
                        "docker" => Some(Layout::Docker),
                        "flat" => Some(Layout::Flat),
                        _ => {
                            return Err(OptionError(format!(
                                "invalid value {value:?} for option thinsnap.layout: expected docker or flat"
                            )));
                        }
                    }
                }
                "thinsnap.error_if_no_space" => o.error_if_no_space = Some(boolean(&key, value)?),
                _ => return Err(OptionError(format!("devmapper: Unknown option {key}"))),
            }
        }
        if lvm_given {
            if lvm.device.is_empty() {
                return Err(OptionError(
                    "must provide device path in `dm.directlvm_device` in order to configure direct-lvm".into(),
                ));
            }
            if lvm.thinp_percent.is_some() != lvm.thinp_metapercent.is_some() {
                return Err(OptionError(
                    "must set both `dm.thinp_percent` and `dm.thinp_metapercent` if either is specified".into(),
                ));
            }
            if lvm.thinp_percent.unwrap_or(0) + lvm.thinp_metapercent.unwrap_or(0) > 100 {
                return Err(OptionError(
                    "combined `dm.thinp_percent` and `dm.thinp_metapercent` must not be greater than 100".into(),
                ));
            }
            if o.thin_pool_device.is_some() {
                return Err(OptionError(
                    "cannot setup direct-lvm when `dm.thinpooldev` is also specified".into(),
                ));
            }
            o.direct_lvm = Some(lvm);
        }
        if o.use_deferred_deletion == Some(true) && o.use_deferred_removal == Some(false) {
            return Err(OptionError(
                "devmapper: Deferred deletion can not be enabled as deferred removal is not enabled. Enable deferred removal using --storage-opt dm.use_deferred_removal=true parameter".into(),
            ));
        }
        Ok(o)
    }

    /// Docker's rule: discard before delete by default only on loopback pools.
    pub fn do_blkdiscard(&self) -> bool {
        self.blkdiscard
            .unwrap_or(self.data_device.is_none() && self.thin_pool_device.is_none())
    }
}

/// Parses the per-layer options (`--storage-opt size=...`).
pub fn parse_layer_size(
    opts: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Bytes>, OptionError> {
    let mut size_opt = None;
    for (k, v) in opts {
        match k.to_ascii_lowercase().as_str() {
            "size" => size_opt = Some(size("size", v)?),
            _ => return Err(OptionError(format!("Unknown option {k}"))),
        }
    }
    Ok(size_opt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str]) -> Result<DmStoreOptions, OptionError> {
        DmStoreOptions::parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.base_size, Bytes(10 << 30));
        assert_eq!(o.loop_data_size, Bytes(100 << 30));
        assert_eq!(o.loop_meta_size, Bytes(2 << 30));
        assert_eq!(o.block_size, Sectors(128));
        assert_eq!(o.min_free_space_percent, 10);
        assert!(o.do_blkdiscard());
        assert_eq!(o.layout, None);
    }

    #[test]
    fn docker_syntax() {
        let o = parse(&[
            "dm.basesize=20G",
            "DM.LoopDataSize=4G",
            "dm.loopmetadatasize=256M",
            "dm.fs=ext4",
            "dm.mkfsarg=-O ^has_journal",
            "dm.mountopt=nodiscard",
            "dm.blocksize=512K",
            "dm.min_free_space=5%",
            "dm.use_deferred_removal=true",
            "dm.use_deferred_deletion=true",
            "dm.thinpooldev=/dev/mapper/docker-thinpool",
            "dm.xfs_nospace_max_retries=0",
        ])
        .unwrap();
        assert_eq!(o.base_size, Bytes(20 << 30));
        assert!(o.user_base_size);
        assert_eq!(o.loop_data_size, Bytes(4 << 30));
        assert_eq!(o.fs.as_deref(), Some("ext4"));
        assert_eq!(o.mkfs_args, ["-O ^has_journal"]);
        assert_eq!(o.block_size, Sectors(1024));
        assert_eq!(o.min_free_space_percent, 5);
        assert_eq!(o.thin_pool_device.as_deref(), Some("docker-thinpool"));
        assert!(!o.do_blkdiscard());
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse(&["dm.bogus=1"]).unwrap_err().0;
        assert_eq!(e, "devmapper: Unknown option dm.bogus");
        assert_eq!(
            parse(&["dm.fs=btrfs"]).unwrap_err().0,
            "devmapper: Unsupported filesystem btrfs"
        );
        assert!(
            parse(&["dm.basesize=ten"])
                .unwrap_err()
                .0
                .contains("dm.basesize")
        );
        assert_eq!(
            parse(&["dm.min_free_space=10"]).unwrap_err().0,
            "devmapper: Option dm.min_free_space requires % suffix"
        );
        assert!(parse(&["dm.min_free_space=100%"]).is_err());
        assert!(parse(&["dm.blocksize=1000"]).unwrap_err().0.contains("64K"));
        assert!(parse(&["noequals"]).is_err());
        assert!(parse(&["dm.use_deferred_removal=maybe"]).is_err());
        assert!(
            parse(&["dm.thinp_percent=95"])
                .unwrap_err()
                .0
                .contains("directlvm_device")
        );
        assert!(
            parse(&["dm.directlvm_device=/dev/vdb", "dm.thinp_percent=95"])
                .unwrap_err()
                .0
                .contains("both")
        );
        assert!(parse(&["dm.libdm_log_level=9"]).is_err());
        assert!(parse(&["thinsnap.layout=weird"]).is_err());
        assert_eq!(
            parse(&["thinsnap.error_if_no_space=true"])
                .unwrap()
                .error_if_no_space,
            Some(true)
        );
        assert!(parse(&["thinsnap.error_if_no_space=sometimes"]).is_err());
        assert!(
            parse(&[
                "dm.use_deferred_removal=false",
                "dm.use_deferred_deletion=true"
            ])
            .is_err()
        );
    }

    #[test]
    fn layer_size() {
        let mut m = std::collections::BTreeMap::new();
        assert_eq!(parse_layer_size(&m).unwrap(), None);
        m.insert("size".to_string(), "20G".to_string());
        assert_eq!(parse_layer_size(&m).unwrap(), Some(Bytes(20 << 30)));
        m.insert("other".to_string(), "1".to_string());
        assert_eq!(parse_layer_size(&m).unwrap_err().0, "Unknown option other");
    }
}
