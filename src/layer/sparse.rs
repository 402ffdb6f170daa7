//! Sparse files coming in. Layer tars should not use sparse entries (OCI),
//! but GNU tar writes them (`--sparse`): old-GNU `S` entries (decoded by the
//! `tar` crate into a stream with zero-filled holes) and PAX sparse entries,
//! formats 1.0 (map at the start of the data) and 0.1 (map in a PAX record),
//! which the `tar` crate does not know and which are handled here, as Go's
//! `archive/tar` (Docker) handles them. Either way, runs of zero blocks are
//! never written, so holes stay holes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::guard::PaxRecord;

/// A zero-filled block of this size (aligned within the written run) is
/// skipped instead of written.
pub const HOLE_BLOCK: usize = 4096;

/// Most map entries accepted in one PAX sparse file.
const MAX_SPARSE_ENTRIES: usize = 1 << 20;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Copies exactly `len` bytes from `src` to `file` at `start`, leaving
/// zero blocks unwritten.
pub fn write_skipping_zeros(
    src: &mut dyn Read,
    file: &File,
    start: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    let mut src = src.take(len);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = match src.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        for (i, block) in buf[..filled].chunks(HOLE_BLOCK).enumerate() {
            if block.iter().any(|b| *b != 0) {
                file.write_all_at(block, start + done + (i * HOLE_BLOCK) as u64)?;
            }
        }
        done += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    if done != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the tar stream ended after {done} of {len} bytes of this entry"),
        ));
    }
    Ok(())
}

/// A regular entry's data: `size` bytes, holes punched, length set.
pub fn write_dense(src: &mut dyn Read, file: &File, size: u64) -> io::Result<()> {
    write_skipping_zeros(src, file, 0, size)?;
    file.set_len(size)
}

/// A PAX sparse entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaxSparse {
    /// 1.0: the map is at the start of the entry's data.
    V1 { real_size: u64 },
    /// 0.1: the map is the `GNU.sparse.map` record.
    V01 {
        real_size: u64,
        map: Vec<(u64, u64)>,
    },
}

fn record<'a>(records: &'a [PaxRecord], key: &str) -> Option<&'a [u8]> {
    records
        .iter()
        .rev()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn number(value: &[u8], what: &str) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "PAX sparse {what} {:?} is not a number",
                String::from_utf8_lossy(value)
            ))
        })
}

impl PaxSparse {
    /// Recognises a PAX sparse entry from its records.
    pub fn from_records(records: &[PaxRecord]) -> io::Result<Option<PaxSparse>> {
        if let Some(major) = record(records, "GNU.sparse.major") {
            let minor = record(records, "GNU.sparse.minor").unwrap_or(b"0");
            if major != b"1" || minor != b"0" {
                return Err(invalid(format!(
                    "PAX sparse format {}.{} is not supported (1.0 and 0.1 are)",
                    String::from_utf8_lossy(major),
                    String::from_utf8_lossy(minor)
                )));
            }
            let real = record(records, "GNU.sparse.realsize")
                .ok_or_else(|| invalid("PAX sparse 1.0 entry without GNU.sparse.realsize"))?;
            return Ok(Some(PaxSparse::V1 {
                real_size: number(real, "realsize")?,
            }));
        }
        if let Some(map) = record(records, "GNU.sparse.map") {
            let real = record(records, "GNU.sparse.size")
                .or_else(|| record(records, "GNU.sparse.realsize"))
                .ok_or_else(|| invalid("PAX sparse 0.1 entry without GNU.sparse.size"))?;
            let nums = map
                .split(|b| *b == b',')
                .filter(|s| !s.is_empty())
                .map(|s| number(s, "map entry"))
                .collect::<io::Result<Vec<_>>>()?;
            if nums.len() % 2 != 0 || nums.len() / 2 > MAX_SPARSE_ENTRIES {
                return Err(invalid("malformed GNU.sparse.map"));
            }
            let map = nums.chunks(2).map(|c| (c[0], c[1])).collect();
            return Ok(Some(PaxSparse::V01 {
                real_size: number(real, "size")?,
                map,
            }));
        }
        if record(records, "GNU.sparse.offset").is_some() {
            return Err(invalid(
                "PAX sparse format 0.0 is not supported (1.0 and 0.1 are)",
            ));
        }
        Ok(None)
    }

    pub fn real_size(&self) -> u64 {
        match self {
            PaxSparse::V1 { real_size } | PaxSparse::V01 { real_size, .. } => *real_size,
        }
    }

    /// Writes the entry (its `data_size` bytes of tar data) into `file`:
    /// each data region at its offset, the rest left as holes.
    pub fn write(&self, src: &mut dyn Read, data_size: u64, file: &File) -> io::Result<()> {
        let real_size = self.real_size();
        let (map, header) = match self {
            PaxSparse::V01 { map, .. } => (map.clone(), 0),
            PaxSparse::V1 { .. } => read_v1_map(src)?,
        };
        let mut expected = header;
        let mut end = 0u64;
        for (off, len) in &map {
            let stop = off
                .checked_add(*len)
                .ok_or_else(|| invalid("sparse map overflows"))?;
            if *off < end || stop > real_size {
                return Err(invalid(format!(
                    "sparse map region {off}+{len} is out of order or beyond the file size {real_size}"
                )));
            }
            end = stop;
            expected = expected.saturating_add(*len);
        }
        if expected != data_size {
            return Err(invalid(format!(
                "the sparse map describes {expected} bytes but the entry holds {data_size}"
            )));
        }
        for (off, len) in map {
            write_skipping_zeros(src, file, off, len)?;
        }
        file.set_len(real_size)
    }
}

/// Reads a 1.0 map: decimal lines `N`, then `offset`, `length` N times,
/// padded to 512 bytes. Returns the map and the bytes it took.
fn read_v1_map(src: &mut dyn Read) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let mut consumed = 0u64;
    let mut line = || -> io::Result<u64> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            src.read_exact(&mut b)?;
            consumed += 1;
            if b[0] == b'\n' {
                break;
            }
            if !b[0].is_ascii_digit() || digits.len() >= 20 {
                return Err(invalid("malformed PAX sparse 1.0 map"));
            }
            digits.push(b[0]);
        }
        number(&digits, "map entry")
    };
    let count = line()? as usize;
    if count > MAX_SPARSE_ENTRIES {
        return Err(invalid(format!("PAX sparse map has {count} entries")));
    }
    let mut map = Vec::with_capacity(count);
    for _ in 0..count {
        map.push((line()?, line()?));
    }
    let pad = consumed.next_multiple_of(512) - consumed;
    io::copy(&mut src.take(pad), &mut io::sink())?;
    Ok((map, consumed + pad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str) -> PaxRecord {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn recognises_formats() {
        let v1 = [
            rec("GNU.sparse.major", "1"),
            rec("GNU.sparse.minor", "0"),
            rec("GNU.sparse.realsize", "99"),
        ];
        assert_eq!(
            PaxSparse::from_records(&v1).unwrap(),
            Some(PaxSparse::V1 { real_size: 99 })
        );
        let v01 = [
            rec("GNU.sparse.size", "10"),
            rec("GNU.sparse.map", "0,2,8,2"),
        ];
        assert_eq!(
            PaxSparse::from_records(&v01).unwrap(),
            Some(PaxSparse::V01 {
                real_size: 10,
                map: vec![(0, 2), (8, 2)]
            })
        );
        assert_eq!(PaxSparse::from_records(&[rec("path", "x")]).unwrap(), None);
        assert!(PaxSparse::from_records(&[rec("GNU.sparse.major", "2")]).is_err());
        assert!(PaxSparse::from_records(&[rec("GNU.sparse.offset", "0")]).is_err());
    }

    #[test]
    fn writes_v1_regions_and_refuses_bad_maps() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = b"2\n0\n3\n10\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcXY");
        let f = File::create(dir.path().join("f")).unwrap();
        PaxSparse::V1 { real_size: 20 }
            .write(&mut data.as_slice(), data.len() as u64, &f)
            .unwrap();
        let got = std::fs::read(dir.path().join("f")).unwrap();
        let mut want = vec![0u8; 20];
        want[..3].copy_from_slice(b"abc");
        want[10..12].copy_from_slice(b"XY");
        assert_eq!(got, want);
        // Regions beyond the file, out of order, or not matching the data.
        for map in [b"1\n30\n5\n".as_slice(), b"2\n10\n2\n0\n3\n", b"1\n0\n4\n"] {
            let mut bad = map.to_vec();
            bad.resize(512, 0);
            bad.extend_from_slice(b"abcXY");
            let e = PaxSparse::V1 { real_size: 20 }
                .write(&mut bad.as_slice(), bad.len() as u64, &f)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }
}
