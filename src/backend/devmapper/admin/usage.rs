//! Where every pool block went: one row per thin device (layer, container
//! `-init`, container, base) with the blocks it maps, the blocks only it
//! maps (freed when it is removed) and the blocks it shares with others,
//! from `thin_ls` on a reserved metadata snapshot. The totals add up to
//! the pool's used data: the exclusive blocks of every device plus the
//! blocks shared by several devices (each counted once).

use serde::Serialize;

use super::super::deviceset::{DeviceReport, DeviceSet};
use super::super::error::DevmapperError;
use crate::dm::ThinUsage;

/// What a thin device is to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// The base device every layer is a snapshot of.
    Base,
    /// An image layer.
    Layer,
    /// A container's `<id>-init` layer.
    ContainerInit,
    /// A container's writable layer (its parent is `<id>-init`).
    Container,
    /// Marked for deferred deletion; its blocks return when it goes.
    Deleted,
    /// In the pool but in no metadata file (not thinsnap's, or a leak).
    Unknown,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Base => "base",
            DeviceKind::Layer => "layer",
            DeviceKind::ContainerInit => "container-init",
            DeviceKind::Container => "container",
            DeviceKind::Deleted => "deleted",
            DeviceKind::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub device_id: u32,
    /// Layer or container id (`base` for the base device, `-` when unknown).
    pub id: String,
    pub kind: DeviceKind,
    pub parent: Option<String>,
    pub mapped_bytes: u64,
    pub exclusive_bytes: u64,
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub devices: usize,
    /// Sum over devices (shared blocks counted once per device).
    pub mapped_bytes: u64,
    /// Sum of every device's exclusive blocks.
    pub exclusive_bytes: u64,
    /// Blocks mapped by two or more devices, each counted once.
    pub shared_bytes: u64,
    /// The pool's used data (exclusive + shared).
    pub pool_used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub pool: String,
    pub block_size: u64,
    pub rows: Vec<UsageRow>,
    pub totals: UsageTotals,
}

/// Sort order for rows (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Exclusive,
    Mapped,
}

impl std::str::FromStr for SortKey {
    type Err = String;
    fn from_str(s: &str) -> Result<SortKey, String> {
        match s {
            "exclusive" => Ok(SortKey::Exclusive),
            "mapped" => Ok(SortKey::Mapped),
            other => Err(format!(
                "unknown sort key {other:?}: use exclusive or mapped"
            )),
        }
    }
}

/// Reads the pool's metadata snapshot and builds the table.
pub fn read(set: &DeviceSet, sort: SortKey) -> Result<UsageReport, DevmapperError> {
    let (usage, status) = set.pool().thin_usage_with_status(set.control())?;
    let report = build(
        &set.pool().name,
        &set.devices(),
        &usage,
        status.used_data_blocks,
        set.block_size().0,
        sort,
    )?;
    Ok(report)
}

/// Joins the pool's per-device block counts with the store's devices.
/// Fails when the counts cannot describe the pool (more exclusive blocks
/// than the pool uses), which means the snapshot and status disagree.
pub fn build(
    pool: &str,
    devices: &[DeviceReport],
    usage: &[ThinUsage],
    pool_used_blocks: u64,
    block_size: u64,
    sort: SortKey,
) -> Result<UsageReport, DevmapperError> {
    let mut rows: Vec<UsageRow> = usage
        .iter()
        .map(|u| {
            let dev = devices.iter().find(|d| d.device_id == u.id);
            let (id, kind, parent) = match dev {
                None => ("-".to_string(), DeviceKind::Unknown, None),
                Some(d) => {
                    let kind = if d.deleted {
                        DeviceKind::Deleted
                    } else if d.hash.is_empty() {
                        DeviceKind::Base
                    } else if d.hash.ends_with("-init") {
                        DeviceKind::ContainerInit
                    } else if d.parent.as_deref() == Some(&format!("{}-init", d.hash)) {
                        DeviceKind::Container
                    } else {
                        DeviceKind::Layer
                    };
                    let id = if d.hash.is_empty() {
                        "base".to_string()
                    } else {
                        d.hash.clone()
                    };
                    let parent = match (&d.parent, d.hash.is_empty()) {
                        (_, true) => None,
                        (Some(p), false) => Some(p.clone()),
                        (None, false) => Some("base".to_string()),
                    };
                    (id, kind, parent)
                }
            };
            UsageRow {
                device_id: u.id,
                id,
                kind,
                parent,
                mapped_bytes: u.mapped_blocks * block_size,
                exclusive_bytes: u.exclusive_blocks * block_size,
                shared_bytes: u.shared_blocks * block_size,
            }
        })
        .collect();
    match sort {
        SortKey::Exclusive => rows.sort_by(|a, b| {
            b.exclusive_bytes
                .cmp(&a.exclusive_bytes)
                .then(a.device_id.cmp(&b.device_id))
        }),
        SortKey::Mapped => rows.sort_by(|a, b| {
            b.mapped_bytes
                .cmp(&a.mapped_bytes)
                .then(a.device_id.cmp(&b.device_id))
        }),
    }
    let exclusive_blocks: u64 = usage.iter().map(|u| u.exclusive_blocks).sum();
    if exclusive_blocks > pool_used_blocks {
        return Err(DevmapperError::Other(format!(
            "pool {pool}: its devices hold {exclusive_blocks} exclusive blocks but the pool reports only {pool_used_blocks} used; the metadata snapshot and the pool disagree (writes in flight?): run the command again"
        )));
    }
    let totals = UsageTotals {
        devices: rows.len(),
        mapped_bytes: usage.iter().map(|u| u.mapped_blocks).sum::<u64>() * block_size,
        exclusive_bytes: exclusive_blocks * block_size,
        shared_bytes: (pool_used_blocks - exclusive_blocks) * block_size,
        pool_used_bytes: pool_used_blocks * block_size,
    };
    Ok(UsageReport {
        pool: pool.to_string(),
        block_size,
        rows,
        totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(hash: &str, id: u32, parent: Option<&str>, deleted: bool) -> DeviceReport {
        DeviceReport {
            hash: hash.into(),
            device_id: id,
            size: 1 << 30,
            transaction_id: id as u64,
            deleted,
            parent: parent.map(str::to_string),
            incomplete: false,
            mounted: false,
        }
    }

    fn u(id: u32, mapped: u64, excl: u64, shared: u64) -> ThinUsage {
        ThinUsage {
            id,
            mapped_blocks: mapped,
            exclusive_blocks: excl,
            shared_blocks: shared,
        }
    }

    #[test]
    fn rows_name_kinds_and_totals_add_up_to_pool_used() {
        let devices = vec![
            dev("", 1, None, false),
            dev("img", 2, None, false),
            dev("c1-init", 3, Some("img"), false),
            dev("c1", 4, Some("c1-init"), false),
            dev("gone", 5, Some("img"), true),
        ];
        // base: 10 blocks all shared with img; img adds 100 exclusive;
        // c1-init shares img's 110; c1 writes 1024 exclusive on top of them.
        // Device 9 is in the pool but no metadata file names it.
        let usage = vec![
            u(1, 10, 0, 10),
            u(2, 110, 100, 10),
            u(3, 110, 0, 110),
            u(4, 1134, 1024, 110),
            u(5, 3, 3, 0),
            u(9, 7, 7, 0),
        ];
        // Distinct used: 10 (base, shared) + 100 (img) + 1024 + 3 + 7.
        let r = build("p", &devices, &usage, 1144, 65536, SortKey::Exclusive).unwrap();
        let ids: Vec<&str> = r.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c1", "img", "-", "gone", "base", "c1-init"]);
        let kind = |id: &str| r.rows.iter().find(|r| r.id == id).unwrap().kind;
        assert_eq!(kind("base"), DeviceKind::Base);
        assert_eq!(kind("img"), DeviceKind::Layer);
        assert_eq!(kind("c1-init"), DeviceKind::ContainerInit);
        assert_eq!(kind("c1"), DeviceKind::Container);
        assert_eq!(kind("gone"), DeviceKind::Deleted);
        assert_eq!(kind("-"), DeviceKind::Unknown);
        let img = r.rows.iter().find(|r| r.id == "img").unwrap();
        assert_eq!(img.parent.as_deref(), Some("base"));
        assert_eq!(img.exclusive_bytes, 100 * 65536);
        assert_eq!(r.totals.exclusive_bytes, 1134 * 65536);
        assert_eq!(r.totals.shared_bytes, 10 * 65536);
        assert_eq!(
            r.totals.exclusive_bytes + r.totals.shared_bytes,
            r.totals.pool_used_bytes
        );
        assert_eq!(
            r.totals.mapped_bytes,
            (10 + 110 + 110 + 1134 + 3 + 7) * 65536
        );
        let by_mapped = build("p", &devices, &usage, 1144, 65536, SortKey::Mapped).unwrap();
        assert_eq!(by_mapped.rows[0].id, "c1");
        assert_eq!(by_mapped.rows[1].id, "img");
        assert_eq!(by_mapped.rows[2].id, "c1-init", "ties go by device id");
    }

    #[test]
    fn counts_that_cannot_describe_the_pool_are_an_error() {
        let e = build("p", &[], &[u(1, 5, 5, 0)], 4, 65536, SortKey::Mapped)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("5 exclusive blocks") && e.contains("only 4"),
            "{e}"
        );
        assert!("size".parse::<SortKey>().is_err());
        assert_eq!("mapped".parse::<SortKey>().unwrap(), SortKey::Mapped);
    }
}
