//! Storage-admin views and changes of a devicemapper store's pool: health
//! (`pool status`, `pool check`, Prometheus), per-device usage (`pool
//! usage`), and growth (`pool extend`, `pool autoextend`).

pub mod extend;
pub mod health;
pub mod usage;

pub use extend::{AutoextendOutcome, ExtendReport, SizeChange};
pub use health::{CheckState, PoolHealth, Thresholds};
pub use usage::{SortKey, UsageReport};

use super::deviceset::DeviceSet;
use super::error::DevmapperError;
use super::lvm;

/// The VG and LV of the pool when LVM made it (its dm uuid starts with
/// `LVM-`), so growth goes through `lvextend`.
pub fn lvm_volume(set: &DeviceSet) -> Result<Option<(String, String)>, DevmapperError> {
    let name = &set.pool().name;
    let uuid = set.control().uuid(name)?;
    Ok(match uuid {
        Some(u) if u.starts_with("LVM-") => lvm::split_dm_name(name),
        _ => None,
    })
}
