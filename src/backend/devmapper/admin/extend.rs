//! Growing a live pool (`pool extend`, `pool autoextend`). Mounted layers
//! keep working: the pool is only suspended for the table swap.
//!
//! - loopback: grow the sparse file, `LOOP_SET_CAPACITY`, reload the pool
//!   table (suspend, load, resume); the kernel picks up a bigger metadata
//!   device at the same resume;
//! - LVM thin pools (direct-lvm or an adopted LV): `lvextend`, which
//!   reloads the pool itself;
//! - block devices (`dm.datadev`/`dm.metadatadev`): the admin grows the
//!   device, thinsnap reloads the pool onto the new size.
//!
//! The target size is computed from what the kernel's pool uses now, so a
//! run killed after growing a file and run again reaches the same size,
//! not twice the growth. Shrinking is refused: dm-thin cannot shrink.

use serde::Serialize;

use super::super::deviceset::{DeviceSet, PoolSource};
use super::super::error::DevmapperError;
use super::super::lvm::Lvm;
use super::lvm_volume;
use crate::dm::loopback;
use crate::dm::status::META_BLOCK_BYTES;
use crate::failpoint;
use crate::units::{Bytes, human_size, parse_size};

type Res<T> = Result<T, DevmapperError>;

pub const FAILPOINTS: &[&str] = &["pool.extend.after_file", "pool.extend.after_capacity"];

fn fp(name: &'static str) -> Res<()> {
    failpoint::hit(name).map_err(|e| DevmapperError::Other(e.to_string()))
}

/// A requested size: `+SIZE` grows by, `SIZE` is the new total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    GrowBy(Bytes),
    To(Bytes),
}

impl std::str::FromStr for SizeChange {
    type Err = String;
    fn from_str(s: &str) -> Result<SizeChange, String> {
        let s = s.trim();
        if s.starts_with('-') {
            return Err(format!(
                "{s}: shrinking a thin pool is not supported (dm-thin cannot give back space it handed out)"
            ));
        }
        let (grow, num) = match s.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let b = parse_size(num).map_err(|e| format!("{s}: {e}"))?;
        if b.0 == 0 {
            return Err(format!("{s}: the size must be above zero"));
        }
        Ok(if grow {
            SizeChange::GrowBy(b)
        } else {
            SizeChange::To(b)
        })
    }
}

impl SizeChange {
    /// The new total from the current one; shrinking is an error, an
    /// equal size is `None` (nothing to do).
    pub fn target(self, what: &str, current: Bytes) -> Res<Option<Bytes>> {
        let t = match self {
            SizeChange::GrowBy(b) => current + b,
            SizeChange::To(t) => t,
        };
        if t < current {
            return Err(DevmapperError::Other(format!(
                "the pool's {what} space is {} ({} bytes); shrinking it to {} is not supported",
                human_size(current.0),
                current.0,
                human_size(t.0)
            )));
        }
        Ok((t > current).then_some(t))
    }
}

/// Sizes before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtendReport {
    pub pool: String,
    pub method: String,
    pub data_before: u64,
    pub data_after: u64,
    pub metadata_before: u64,
    pub metadata_after: u64,
}

impl ExtendReport {
    pub fn summary(&self) -> String {
        format!(
            "pool {} ({}): data {} -> {}, metadata {} -> {}",
            self.pool,
            self.method,
            human_size(self.data_before),
            human_size(self.data_after),
            human_size(self.metadata_before),
            human_size(self.metadata_after)
        )
    }
}

/// The pool's data and metadata sizes as the kernel uses them.
fn sizes(set: &DeviceSet) -> Res<(Bytes, Bytes)> {
    let s = set.pool_status()?;
    Ok((
        Bytes(s.total_data_blocks * set.block_size().0),
        Bytes(s.total_meta_blocks * META_BLOCK_BYTES),
    ))
}

/// Grows the pool by `data` and/or `metadata`.
pub fn extend(
    set: &DeviceSet,
    data: Option<SizeChange>,
    metadata: Option<SizeChange>,
) -> Res<ExtendReport> {
    let pool = set.pool().name.clone();
    let _span = tracing::info_span!("pool_extend", pool = %pool).entered();
    if data.is_none() && metadata.is_none() {
        return Err(DevmapperError::Other(
            "nothing to extend: give --data +SIZE and/or --metadata +SIZE".into(),
        ));
    }
    let (data_before, meta_before) = sizes(set)?;
    // The data target from the table length (what the kernel was given),
    // which equals the data space up to a partial last block.
    let table = set.pool().table(set.control())?;
    let data_now = table.data_len.bytes();
    let data_to = match data {
        Some(c) => c.target("data", data_now)?,
        None => None,
    };
    let meta_to = match metadata {
        Some(c) => c.target("metadata", meta_before)?,
        None => None,
    };
    let task = crate::progress::task(&format!("extending pool {pool}"), Some(3));
    let method = if let Some((vg, lv)) = lvm_volume(set)? {
        task.message("lvextend");
        extend_lvm(&vg, &lv, data_to, meta_to)?;
        format!("lvm {vg}/{lv}")
    } else {
        match set.source() {
            PoolSource::Loopback {
                data_file,
                meta_file,
                data_loop,
                meta_loop,
            } => {
                task.message("growing loop files");
                if let Some(t) = data_to {
                    loopback::ensure_sparse_file(data_file, t)?;
                }
                if let Some(t) = meta_to {
                    loopback::ensure_sparse_file(meta_file, t)?;
                }
                fp("pool.extend.after_file")?;
                task.set(1);
                task.message("setting loop capacity");
                for (l, t) in [(data_loop, data_to), (meta_loop, meta_to)] {
                    if let Some(t) = t {
                        loopback::refresh_capacity(l)?;
                        let got = loopback::size(l)?;
                        if got < t {
                            return Err(DevmapperError::Other(format!(
                                "{} is {} after LOOP_SET_CAPACITY, expected at least {}",
                                l.path.display(),
                                got.0,
                                t.0
                            )));
                        }
                    }
                }
                fp("pool.extend.after_capacity")?;
                task.set(2);
                task.message("reloading the pool table");
                reload(set, data_to.unwrap_or(data_now))?;
                "loopback".to_string()
            }
            PoolSource::Devices { data: d, meta: m } => {
                for (dev, t, what) in [(d, data_to, "data"), (m, meta_to, "metadata")] {
                    if let Some(t) = t {
                        let have = crate::dm::block::size(std::path::Path::new(dev))?;
                        if have < t {
                            return Err(DevmapperError::Other(format!(
                                "the pool's {what} device {dev} is {} ({} bytes): grow it to at least {} first (e.g. lvextend), then run this again",
                                human_size(have.0),
                                have.0,
                                human_size(t.0)
                            )));
                        }
                    }
                }
                task.message("reloading the pool table");
                reload(set, data_to.unwrap_or(data_now))?;
                "block devices".to_string()
            }
            PoolSource::External => {
                return Err(DevmapperError::Other(format!(
                    "pool {pool} (dm.thinpooldev) is not an LVM thin pool: grow its data and metadata devices and reload its table with the tool that created it"
                )));
            }
        }
    };
    task.set(3);
    let (data_after, meta_after) = sizes(set)?;
    if data_to.is_some_and(|t| data_after.0 + set.block_size().0 <= t.0)
        || meta_to.is_some_and(|t| meta_after.0 + META_BLOCK_BYTES <= t.0.min(MAX_METADATA))
    {
        return Err(DevmapperError::Other(format!(
            "pool {pool} did not take the new size: data {} (wanted {}), metadata {} (wanted {})",
            data_after.0,
            data_to.map(|b| b.0.to_string()).unwrap_or("-".into()),
            meta_after.0,
            meta_to.map(|b| b.0.to_string()).unwrap_or("-".into())
        )));
    }
    let report = ExtendReport {
        pool,
        method,
        data_before: data_before.0,
        data_after: data_after.0,
        metadata_before: meta_before.0,
        metadata_after: meta_after.0,
    };
    task.finish(&report.summary());
    tracing::info!(summary = %report.summary(), "pool extended");
    Ok(report)
}

/// The most metadata a pool uses (the kernel ignores space past ~15.8 GiB).
const MAX_METADATA: u64 = 255 * (1 << 14) * 8 * 512;

/// Loads the pool's table with `data_len` (the same devices) and swaps it
/// in; a bigger metadata device is picked up at the same resume.
fn reload(set: &DeviceSet, data_len: Bytes) -> Res<()> {
    set.pool()
        .resize(set.control(), data_len.sectors())
        .map_err(Into::into)
}

fn extend_lvm(vg: &str, lv: &str, data_to: Option<Bytes>, meta_to: Option<Bytes>) -> Res<()> {
    let lvm = Lvm::detect();
    let target = format!("{vg}/{lv}");
    if let Some(t) = data_to {
        lvm.run("lvextend", &["-L", &format!("{}b", t.0), &target])?;
    }
    if let Some(t) = meta_to {
        lvm.run(
            "lvextend",
            &["--poolmetadatasize", &format!("{}b", t.0), &target],
        )?;
    }
    Ok(())
}

/// What `autoextend` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoextendOutcome {
    pub data_used_percent: f64,
    pub metadata_used_percent: f64,
    pub threshold: u64,
    pub extended: Option<ExtendReport>,
}

/// One autoextend pass. LVM pools follow their lvm profile through
/// `lvextend --use-policies` (what dmeventd runs); other pools grow by
/// `percent` of their size when data or metadata use reaches `threshold`.
pub fn autoextend(set: &DeviceSet, threshold: u64, percent: u64) -> Res<AutoextendOutcome> {
    let s = set.pool_status()?;
    let pct = |u: u64, t: u64| {
        if t == 0 {
            0.0
        } else {
            u as f64 * 100.0 / t as f64
        }
    };
    let data_pct = pct(s.used_data_blocks, s.total_data_blocks);
    let meta_pct = pct(s.used_meta_blocks, s.total_meta_blocks);
    let over = |p: f64| threshold < 100 && p >= threshold as f64;
    let mut out = AutoextendOutcome {
        data_used_percent: data_pct,
        metadata_used_percent: meta_pct,
        threshold,
        extended: None,
    };
    if !over(data_pct) && !over(meta_pct) {
        return Ok(out);
    }
    let (data_before, meta_before) = sizes(set)?;
    if let Some((vg, lv)) = lvm_volume(set)? {
        Lvm::detect().run("lvextend", &["--use-policies", &format!("{vg}/{lv}")])?;
        let (data_after, meta_after) = sizes(set)?;
        if (data_after, meta_after) != (data_before, meta_before) {
            out.extended = Some(ExtendReport {
                pool: set.pool().name.clone(),
                method: format!("lvextend --use-policies {vg}/{lv}"),
                data_before: data_before.0,
                data_after: data_after.0,
                metadata_before: meta_before.0,
                metadata_after: meta_after.0,
            });
        }
        return Ok(out);
    }
    let grow = |now: Bytes| SizeChange::GrowBy(Bytes((now.0 * percent / 100).max(1 << 20)));
    out.extended = Some(extend(
        set,
        over(data_pct).then(|| grow(data_before)),
        over(meta_pct).then(|| grow(meta_before)),
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_changes_parse_and_refuse_shrinking() {
        assert_eq!(
            "+1G".parse::<SizeChange>().unwrap(),
            SizeChange::GrowBy(Bytes(1 << 30))
        );
        assert_eq!(
            "512M".parse::<SizeChange>().unwrap(),
            SizeChange::To(Bytes(512 << 20))
        );
        assert!(
            "-1G"
                .parse::<SizeChange>()
                .unwrap_err()
                .contains("shrinking")
        );
        assert!("+0".parse::<SizeChange>().is_err());
        assert!("+lots".parse::<SizeChange>().is_err());
        let now = Bytes(2 << 30);
        assert_eq!(
            SizeChange::GrowBy(Bytes(1 << 30))
                .target("data", now)
                .unwrap(),
            Some(Bytes(3 << 30))
        );
        assert_eq!(SizeChange::To(now).target("data", now).unwrap(), None);
        let e = SizeChange::To(Bytes(1 << 30))
            .target("data", now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shrinking it to 1.074GB is not supported"),
            "{e}"
        );
    }
}
