//! `docker info`'s devicemapper section: the same keys, order and formulas
//! (sizes printed with decimal units), plus a JSON form with raw numbers.

use serde::{Deserialize, Serialize};

use super::deviceset::{DeviceSet, PoolSource};
use super::error::DevmapperError;
use crate::dm::status::META_BLOCK_BYTES;
use crate::units::human_size;

/// Raw numbers behind the status lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pool_name: String,
    pub pool_blocksize: u64,
    pub base_device_size: u64,
    pub backing_filesystem: String,
    pub udev_sync_supported: bool,
    pub data_file: Option<String>,
    pub metadata_file: Option<String>,
    pub data_loop_file: Option<String>,
    pub metadata_loop_file: Option<String>,
    pub data_space_used: u64,
    pub data_space_total: u64,
    pub data_space_available: u64,
    pub metadata_space_used: u64,
    pub metadata_space_total: u64,
    pub metadata_space_available: u64,
    pub thin_pool_minimum_free_space: u64,
    pub deferred_removal_enabled: bool,
    pub deferred_deletion_enabled: bool,
    pub deferred_deleted_device_count: usize,
    pub library_version: String,
    pub layout: String,
    pub pool_mode: String,
    pub needs_check: bool,
    pub pool_transaction_id: u64,
    pub devices: usize,
    pub broken_metadata_files: Vec<String>,
}

/// Free bytes of the filesystem holding `path` (caps "Available" for loop files).
fn fs_free(path: &std::path::Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(path)
        .ok()
        .map(|s| s.blocks_free() * s.fragment_size())
}

pub fn report(set: &DeviceSet) -> Result<StatusReport, DevmapperError> {
    let s = set.pool_status()?;
    let bs = set.block_size().0;
    let data_used = s.used_data_blocks * bs;
    let data_total = s.total_data_blocks * bs;
    let meta_used = s.used_meta_blocks * META_BLOCK_BYTES;
    let meta_total = s.total_meta_blocks * META_BLOCK_BYTES;
    let mut data_avail = data_total.saturating_sub(data_used);
    let mut meta_avail = meta_total.saturating_sub(meta_used);
    let (data_file, metadata_file, data_loop_file, metadata_loop_file) = match set.source() {
        PoolSource::Loopback {
            data_file,
            meta_file,
            data_loop,
            meta_loop,
        } => {
            if let Some(free) = fs_free(data_file) {
                data_avail = data_avail.min(free);
            }
            if let Some(free) = fs_free(meta_file) {
                meta_avail = meta_avail.min(free);
            }
            (
                Some(data_loop.path.display().to_string()),
                Some(meta_loop.path.display().to_string()),
                Some(data_file.display().to_string()),
                Some(meta_file.display().to_string()),
            )
        }
        PoolSource::Devices { data, meta } => (Some(data.clone()), Some(meta.clone()), None, None),
        PoolSource::External => (None, None, None, None),
    };
    let pct = set.options().min_free_space_percent as u64;
    let (dr, dd) = set.deferred();
    let kernel = set
        .control()
        .driver_version()
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_else(|_| "unknown".into());
    Ok(StatusReport {
        pool_name: set.pool().name.clone(),
        pool_blocksize: bs,
        base_device_size: set.base_size(),
        backing_filesystem: set.filesystem().to_string(),
        udev_sync_supported: std::path::Path::new("/run/udev/control").exists(),
        data_file,
        metadata_file,
        data_loop_file,
        metadata_loop_file,
        data_space_used: data_used,
        data_space_total: data_total,
        data_space_available: data_avail,
        metadata_space_used: meta_used,
        metadata_space_total: meta_total,
        metadata_space_available: meta_avail,
        thin_pool_minimum_free_space: (s.total_data_blocks * pct / 100) * bs,
        deferred_removal_enabled: dr,
        deferred_deletion_enabled: dd,
        deferred_deleted_device_count: set.deleted_count(),
        library_version: format!(
            "thinsnap {} (devicemapper-rs ioctls, no libdm; dm driver {kernel})",
            env!("CARGO_PKG_VERSION")
        ),
        layout: set.layout().as_str().to_string(),
        pool_mode: s.mode.as_str().to_string(),
        needs_check: s.needs_check,
        pool_transaction_id: s.transaction_id,
        devices: set.live_layer_count(),
        broken_metadata_files: set
            .broken_files()
            .iter()
            .map(|b| b.path.display().to_string())
            .collect(),
    })
}

/// The lines in Docker's order (since moby PR #35314), then thinsnap's own.
pub fn lines(r: &StatusReport) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, val: String| v.push((k.to_string(), val));
    push("Pool Name", r.pool_name.clone());
    push("Pool Blocksize", human_size(r.pool_blocksize));
    push("Base Device Size", human_size(r.base_device_size));
    push("Backing Filesystem", r.backing_filesystem.clone());
    push("Udev Sync Supported", r.udev_sync_supported.to_string());
    for (k, val) in [
        ("Data file", &r.data_file),
        ("Metadata file", &r.metadata_file),
        ("Data loop file", &r.data_loop_file),
        ("Metadata loop file", &r.metadata_loop_file),
    ] {
        if let Some(val) = val {
            push(k, val.clone());
        }
    }
    push("Data Space Used", human_size(r.data_space_used));
    push("Data Space Total", human_size(r.data_space_total));
    push("Data Space Available", human_size(r.data_space_available));
    push("Metadata Space Used", human_size(r.metadata_space_used));
    push("Metadata Space Total", human_size(r.metadata_space_total));
    push(
        "Metadata Space Available",
        human_size(r.metadata_space_available),
    );
    push(
        "Thin Pool Minimum Free Space",
        human_size(r.thin_pool_minimum_free_space),
    );
    push(
        "Deferred Removal Enabled",
        r.deferred_removal_enabled.to_string(),
    );
    push(
        "Deferred Deletion Enabled",
        r.deferred_deletion_enabled.to_string(),
    );
    push(
        "Deferred Deleted Device Count",
        r.deferred_deleted_device_count.to_string(),
    );
    push("Library Version", r.library_version.clone());
    push("Layout", r.layout.clone());
    push("Pool Mode", r.pool_mode.clone());
    push("Pool Transaction ID", r.pool_transaction_id.to_string());
    push("Devices", r.devices.to_string());
    if !r.broken_metadata_files.is_empty() {
        push(
            "Unreadable Metadata Files",
            r.broken_metadata_files.join(", "),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_order_and_units() {
        let r = StatusReport {
            pool_name: "docker-8:1-42-pool".into(),
            pool_blocksize: 65536,
            base_device_size: 10737418240,
            backing_filesystem: "xfs".into(),
            udev_sync_supported: false,
            data_file: Some("/dev/loop0".into()),
            metadata_file: Some("/dev/loop1".into()),
            data_loop_file: Some("/x/devicemapper/data".into()),
            metadata_loop_file: Some("/x/devicemapper/metadata".into()),
            data_space_used: 11730000,
            data_space_total: 107374182400,
            data_space_available: 107362452400,
            metadata_space_used: 17_000_000,
            metadata_space_total: 2147483648,
            metadata_space_available: 2130483648,
            thin_pool_minimum_free_space: 10737418240,
            deferred_removal_enabled: true,
            deferred_deletion_enabled: true,
            deferred_deleted_device_count: 0,
            library_version: "x".into(),
            layout: "docker".into(),
            pool_mode: "rw".into(),
            needs_check: false,
            pool_transaction_id: 5,
            devices: 4,
            broken_metadata_files: vec![],
        };
        let l = lines(&r);
        let keys: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &keys[..20],
            [
                "Pool Name",
                "Pool Blocksize",
                "Base Device Size",
                "Backing Filesystem",
                "Udev Sync Supported",
                "Data file",
                "Metadata file",
                "Data loop file",
                "Metadata loop file",
                "Data Space Used",
                "Data Space Total",
                "Data Space Available",
                "Metadata Space Used",
                "Metadata Space Total",
                "Metadata Space Available",
                "Thin Pool Minimum Free Space",
                "Deferred Removal Enabled",
                "Deferred Deletion Enabled",
                "Deferred Deleted Device Count",
                "Library Version",
            ]
        );
        assert_eq!(l[1].1, "65.54kB");
        assert_eq!(l[2].1, "10.74GB");
        assert_eq!(l[9].1, "11.73MB");
        assert_eq!(l[10].1, "107.4GB");
    }
}
