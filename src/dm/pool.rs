//! A dm-thin pool: creation, adoption, table and status, the pool messages
//! (`create_thin`, `create_snap`, `delete`, `set_transaction_id`, metadata
//! snapshots), growth, and per-thin-device usage from thin-provisioning-tools.

use std::process::Command;

use nix::errno::Errno;
use serde::Serialize;

use super::control::{DevNo, DmControl, TargetLine};
use super::error::{DmError, DmResult};
use super::status::{PoolStatus, parse_pool_status};
use super::thin_id::ThinId;
use crate::units::Sectors;

/// A pool known by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
}

/// The parameters of a `thin-pool` table line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolTable {
    /// Data device length (the target's length).
    pub data_len: Sectors,
    #[serde(serialize_with = "ser_devno")]
    pub meta: DevNo,
    #[serde(serialize_with = "ser_devno")]
    pub data: DevNo,
    pub block_size: Sectors,
    pub low_water_mark: u64,
    pub features: Vec<String>,
}

fn ser_devno<S: serde::Serializer>(d: &DevNo, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

impl PoolTable {
    pub fn line(&self) -> TargetLine {
        let mut params = format!(
            "{} {} {} {} {}",
            self.meta,
            self.data,
            self.block_size.0,
            self.low_water_mark,
            self.features.len()
        );
        for f in &self.features {
            params.push(' ');
            params.push_str(f);
        }
        (0, self.data_len.0, "thin-pool".to_string(), params)
    }

    fn parse(device: &str, line: &TargetLine) -> DmResult<PoolTable> {
        let bad = || DmError::Parse {
            what: "thin-pool table",
            device: device.to_string(),
            line: line.3.clone(),
        };
        let f: Vec<&str> = line.3.split_whitespace().collect();
        if f.len() < 5 {
            return Err(bad());
        }
        let nfeat: usize = f[4].parse().map_err(|_| bad())?;
        Ok(PoolTable {
            data_len: Sectors(line.1),
            meta: DevNo::parse(f[0]).ok_or_else(bad)?,
            data: DevNo::parse(f[1]).ok_or_else(bad)?,
            block_size: Sectors(f[2].parse().map_err(|_| bad())?),
            low_water_mark: f[3].parse().map_err(|_| bad())?,
            features: f
                .iter()
                .skip(5)
                .take(nfeat)
                .map(|s| s.to_string())
                .collect(),
        })
    }
}

/// Space use of one thin device, from the pool's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThinUsage {
    pub id: u32,
    pub mapped_blocks: u64,
    pub exclusive_blocks: u64,
    pub shared_blocks: u64,
}

impl Pool {
    pub fn new(name: &str) -> Pool {
        Pool {
            name: name.to_string(),
        }
    }

    /// Creates the pool device. The metadata device must start zeroed for a
    /// new pool; existing pool metadata on it is opened as it is.
    pub fn create(ctl: &DmControl, name: &str, table: &PoolTable) -> DmResult<Pool> {
        ctl.create(name, &[table.line()])?;
        Ok(Pool::new(name))
    }

    /// The pool named `name`, if a device of that name exists; an error if
    /// it exists but is not a thin pool.
    pub fn open(ctl: &DmControl, name: &str) -> DmResult<Option<(Pool, PoolTable)>> {
        if ctl.info(name)?.is_none() {
            return Ok(None);
        }
        let pool = Pool::new(name);
        let table = pool.table(ctl)?;
        Ok(Some((pool, table)))
    }

    pub fn table(&self, ctl: &DmControl) -> DmResult<PoolTable> {
        let lines = ctl.table(&self.name)?;
        match lines.as_slice() {
            [line] if line.2 == "thin-pool" => PoolTable::parse(&self.name, line),
            other => Err(DmError::WrongTarget {
                name: self.name.clone(),
                expected: "thin pool",
                table: other
                    .iter()
                    .map(|l| format!("{} {} {} {}", l.0, l.1, l.2, l.3))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    pub fn devno(&self, ctl: &DmControl) -> DmResult<DevNo> {
        ctl.info(&self.name)?
            .map(|s| s.devno)
            .ok_or_else(|| DmError::WrongTarget {
                name: self.name.clone(),
                expected: "thin pool",
                table: "no such device".into(),
            })
    }

    pub fn status(&self, ctl: &DmControl) -> DmResult<PoolStatus> {
        let lines = ctl.status(&self.name)?;
        let line = lines.first().ok_or_else(|| DmError::Parse {
            what: "thin-pool status",
            device: self.name.clone(),
            line: String::new(),
        })?;
        parse_pool_status(&line.3).ok_or_else(|| DmError::Parse {
            what: "thin-pool status",
            device: self.name.clone(),
            line: line.3.clone(),
        })
    }

    fn msg(&self, ctl: &DmControl, msg: &str) -> DmResult<()> {
        ctl.message(&self.name, msg).map(|_| ())
    }

    /// `create_thin <id>`; EEXIST (id taken) comes back as the errno.
    pub fn create_thin(&self, ctl: &DmControl, id: ThinId) -> DmResult<()> {
        self.msg(ctl, &format!("create_thin {id}"))
    }

    /// `create_snap <id> <origin>`. An active origin must be suspended first.
    pub fn create_snap(&self, ctl: &DmControl, id: ThinId, origin: ThinId) -> DmResult<()> {
        self.msg(ctl, &format!("create_snap {id} {origin}"))
    }

    /// `delete <id>`. Returns false when the pool has no such id (ENODATA),
    /// which a caller finishing an interrupted delete treats as done.
    pub fn delete(&self, ctl: &DmControl, id: ThinId) -> DmResult<bool> {
        match self.msg(ctl, &format!("delete {id}")) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENODATA) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `set_transaction_id <old> <new>`; the kernel refuses when `old` is
    /// not the pool's current id.
    pub fn set_transaction_id(&self, ctl: &DmControl, old: u64, new: u64) -> DmResult<()> {
        self.msg(ctl, &format!("set_transaction_id {old} {new}"))
    }

    pub fn reserve_metadata_snap(&self, ctl: &DmControl) -> DmResult<()> {
        self.msg(ctl, "reserve_metadata_snap")
    }

    pub fn release_metadata_snap(&self, ctl: &DmControl) -> DmResult<()> {
        self.msg(ctl, "release_metadata_snap")
    }

    /// Grows (or re-tables) the pool: same devices, new data length.
    pub fn resize(&self, ctl: &DmControl, data_len: Sectors) -> DmResult<()> {
        let mut table = self.table(ctl)?;
        table.data_len = data_len;
        ctl.reload(&self.name, &[table.line()])
    }

    /// Removes the pool device (its thin devices must be inactive).
    pub fn remove(&self, ctl: &DmControl) -> DmResult<()> {
        ctl.remove(&self.name, false, std::time::Duration::from_secs(2))
    }

    /// Per-thin-device usage read from a reserved metadata snapshot with
    /// `thin_ls`, so the live pool keeps running while it is read.
    pub fn thin_usage(&self, ctl: &DmControl) -> DmResult<Vec<ThinUsage>> {
        self.thin_usage_with_status(ctl).map(|(u, _)| u)
    }

    /// `thin_usage` and the pool status read while the snapshot is held
    /// (reserving commits the metadata, so both describe the same moment
    /// unless writes are in flight).
    pub fn thin_usage_with_status(
        &self,
        ctl: &DmControl,
    ) -> DmResult<(Vec<ThinUsage>, PoolStatus)> {
        let table = self.table(ctl)?;
        let meta = table.meta.devnode().ok_or_else(|| {
            DmError::io(
                "finding the metadata device of",
                format!("pool {}", self.name),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        self.reserve_metadata_snap(ctl)?;
        let status = self.status(ctl);
        let out = Command::new("thin_ls")
            .arg("--metadata-snap")
            .arg("--no-headers")
            .args(["-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"])
            .arg(&meta)
            .output();
        let released = self.release_metadata_snap(ctl);
        let out = out.map_err(|e| DmError::io("running thin_ls on", &meta, e))?;
        released?;
        if !out.status.success() {
            return Err(DmError::Tool {
                tool: "thin_ls".into(),
                args: format!("--metadata-snap {}", meta.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let usage =
            parse_thin_ls(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| DmError::Parse {
                what: "thin_ls output",
                device: self.name.clone(),
                line: String::from_utf8_lossy(&out.stdout).into_owned(),
            })?;
        Ok((usage, status?))
    }
}

/// Parses `thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS`.
pub fn parse_thin_ls(text: &str) -> Option<Vec<ThinUsage>> {
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<_>>>()?;
        if f.len() != 4 {
            return None;
        }
        v.push(ThinUsage {
            id: u32::try_from(f[0]).ok()?,
            mapped_blocks: f[1],
            exclusive_blocks: f[2],
            shared_blocks: f[3],
        });
    }
    v.sort_by_key(|u| u.id);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip() {
        let line: TargetLine = (
            0,
            2097152,
            "thin-pool".into(),
            "7:1 7:0 128 32768 1 skip_block_zeroing".into(),
        );
        let t = PoolTable::parse("p", &line).unwrap();
        assert_eq!(t.meta, DevNo { major: 7, minor: 1 });
        assert_eq!(t.block_size, Sectors(128));
        assert_eq!(t.features, ["skip_block_zeroing"]);
        assert_eq!(t.line(), line);
        assert!(PoolTable::parse("p", &(0, 1, "thin-pool".into(), "7:1".into())).is_err());
    }

    #[test]
    fn parses_thin_ls() {
        let v = parse_thin_ls("   2   10   4   6\n1 100 90 10\n").unwrap();
        assert_eq!(v[0].id, 1);
        assert_eq!(v[1].exclusive_blocks, 4);
        assert!(parse_thin_ls("1 2 3\n").is_none());
        assert!(parse_thin_ls("").unwrap().is_empty());
    }
}
