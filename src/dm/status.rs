//! Parsing the kernel's thin-pool and thin status lines.

use serde::Serialize;

/// How the pool is running (`rw`, `ro`, `out_of_data_space`, or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    ReadWrite,
    ReadOnly,
    OutOfDataSpace,
    /// The target reported `Fail`: metadata or data device errors.
    Failed,
}

impl PoolMode {
    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "read_only",
            PoolMode::OutOfDataSpace => "out_of_data_space",
            PoolMode::Failed => "failed",
        }
    }
}

/// One thin-pool status line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub transaction_id: u64,
    pub used_meta_blocks: u64,
    pub total_meta_blocks: u64,
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// Root of a reserved metadata snapshot, if one is held.
    pub held_metadata_root: Option<u64>,
    pub mode: PoolMode,
    pub discard_passdown: bool,
    /// `error_if_no_space` (true) or `queue_if_no_space`.
    pub error_if_no_space: bool,
    pub needs_check: bool,
    pub metadata_low_watermark: Option<u64>,
}

/// Metadata blocks are always 4 KiB.
pub const META_BLOCK_BYTES: u64 = 4096;

/// Parses the params of a `thin-pool` status line.
pub fn parse_pool_status(params: &str) -> Option<PoolStatus> {
    let f: Vec<&str> = params.split_whitespace().collect();
    if f.first() == Some(&"Fail") {
        return Some(PoolStatus {
            transaction_id: 0,
            used_meta_blocks: 0,
            total_meta_blocks: 0,
            used_data_blocks: 0,
            total_data_blocks: 0,
            held_metadata_root: None,
            mode: PoolMode::Failed,
            discard_passdown: false,
            error_if_no_space: false,
            needs_check: true,
            metadata_low_watermark: None,
        });
    }
    if f.len() < 8 {
        return None;
    }
    let frac = |s: &str| -> Option<(u64, u64)> {
        let (a, b) = s.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (um, tm) = frac(f[1])?;
    let (ud, td) = frac(f[2])?;
    Some(PoolStatus {
        transaction_id: f[0].parse().ok()?,
        used_meta_blocks: um,
        total_meta_blocks: tm,
        used_data_blocks: ud,
        total_data_blocks: td,
        held_metadata_root: f[3].parse().ok(),
        mode: match f[4] {
            "rw" => PoolMode::ReadWrite,
            "ro" => PoolMode::ReadOnly,
            "out_of_data_space" => PoolMode::OutOfDataSpace,
            _ => return None,
        },
        discard_passdown: f[5] == "discard_passdown",
        error_if_no_space: f[6] == "error_if_no_space",
        needs_check: f[7] == "needs_check",
        metadata_low_watermark: f.get(8).and_then(|s| s.parse().ok()),
    })
}

/// One thin device status: sectors mapped and the highest mapped sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThinStatus {
    pub mapped_sectors: u64,
    pub highest_mapped_sector: Option<u64>,
}

pub fn parse_thin_status(params: &str) -> Option<ThinStatus> {
    let f: Vec<&str> = params.split_whitespace().collect();
    if f.first() == Some(&"Fail") || f.is_empty() {
        return None;
    }
    Some(ThinStatus {
        mapped_sectors: f[0].parse().ok()?,
        highest_mapped_sector: f.get(1).and_then(|s| s.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pool_status() {
        let s = parse_pool_status(
            "5 207/65536 1842/32768 - rw discard_passdown queue_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(s.transaction_id, 5);
        assert_eq!((s.used_meta_blocks, s.total_meta_blocks), (207, 65536));
        assert_eq!((s.used_data_blocks, s.total_data_blocks), (1842, 32768));
        assert_eq!(s.held_metadata_root, None);
        assert_eq!(s.mode, PoolMode::ReadWrite);
        assert!(s.discard_passdown && !s.error_if_no_space && !s.needs_check);
        assert_eq!(s.metadata_low_watermark, Some(1024));
        let s = parse_pool_status(
            "9 1/2 3/4 77 out_of_data_space no_discard_passdown error_if_no_space needs_check 8",
        )
        .unwrap();
        assert_eq!(s.held_metadata_root, Some(77));
        assert_eq!(s.mode, PoolMode::OutOfDataSpace);
        assert!(s.error_if_no_space && s.needs_check && !s.discard_passdown);
        assert_eq!(parse_pool_status("Fail").unwrap().mode, PoolMode::Failed);
        assert!(parse_pool_status("1 2").is_none());
        assert!(parse_pool_status("x 1/2 3/4 - rw a b c").is_none());
    }

    #[test]
    fn parses_thin_status() {
        assert_eq!(
            parse_thin_status("2048 4095").unwrap(),
            ThinStatus {
                mapped_sectors: 2048,
                highest_mapped_sector: Some(4095)
            }
        );
        assert_eq!(
            parse_thin_status("0 -").unwrap().highest_mapped_sector,
            None
        );
        assert!(parse_thin_status("Fail").is_none());
    }
}
