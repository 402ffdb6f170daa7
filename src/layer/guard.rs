//! A reader between the decompressor and the tar parser that follows the
//! archive's header blocks and refuses oversized metadata entries (GNU long
//! names and long links, PAX headers) before the parser buffers them: the
//! `tar` crate reads such an entry wholly into memory, so a header claiming
//! gigabytes would otherwise cost that much memory.
//!
//! It tracks entry boundaries as the parser does (PAX `size` overrides the
//! next real entry, old-GNU sparse headers may be followed by extension
//! blocks). When it meets anything it cannot follow (a bad checksum, an
//! unparsable size, the end-of-archive block) it stops checking and leaves
//! the verdict to the parser.

use std::io::{self, Read};

/// Largest GNU long name/link or PAX header entry accepted.
pub const MAX_META_ENTRY: u64 = 1 << 20;

const BLOCK: u64 = 512;

pub struct HeaderGuard<R> {
    inner: R,
    /// Bytes to pass before the next header block.
    skip: u64,
    /// The header block being received.
    block: Vec<u8>,
    /// Old-GNU sparse extension blocks follow; then `pending` bytes of data.
    sparse_ext: bool,
    pending: u64,
    /// Data of a PAX header being received (to learn a `size` override).
    pax: Option<(Vec<u8>, u64)>,
    pax_size: Option<u64>,
    done: bool,
    /// Set when the guard stopped because it could not follow the stream.
    lost: bool,
}

impl<R: Read> HeaderGuard<R> {
    pub fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            skip: 0,
            block: Vec::with_capacity(BLOCK as usize),
            sparse_ext: false,
            pending: 0,
            pax: None,
            pax_size: None,
            done: false,
            lost: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                if let Some((buf, left)) = self.pax.as_mut() {
                    let take = (*left).min(n as u64) as usize;
                    buf.extend_from_slice(&data[..take]);
                    *left -= take as u64;
                }
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0
                    && let Some((buf, _)) = self.pax.take()
                {
                    self.pax_size = pax_size(&buf);
                }
                continue;
            }
            let want = BLOCK as usize - self.block.len();
            let n = want.min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == BLOCK as usize {
                let block = std::mem::take(&mut self.block);
                self.header(&block)?;
            }
        }
        Ok(())
    }

    fn header(&mut self, block: &[u8]) -> io::Result<()> {
        if self.sparse_ext {
            // Old-GNU sparse extension: `isextended` at byte 504.
            if block[504] == 0 {
                self.sparse_ext = false;
                self.skip = self.pending;
            }
            return Ok(());
        }
        if block.iter().all(|b| *b == 0) {
            self.done = true;
            return Ok(());
        }
        let sum: u32 = block[..148]
            .iter()
            .chain(&block[156..])
            .map(|b| u32::from(*b))
            .sum::<u32>()
            + 8 * 32;
        let h = tar::Header::from_byte_slice(block);
        if h.cksum().ok() != Some(sum) {
            self.done = true;
            self.lost = true;
            return Ok(());
        }
        let Ok(mut size) = h.entry_size() else {
            self.done = true;
            self.lost = true;
            return Ok(());
        };
        let kind = block[156];
        let is_meta = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if is_meta && size > MAX_META_ENTRY {
            let what = match kind {
                b'L' => "GNU long name",
                b'K' => "GNU long link name",
                _ => "PAX header",
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a {what} entry claims {size} bytes; the limit is {MAX_META_ENTRY} (a tar bomb?)"
                ),
            ));
        }
        if !is_meta && let Some(s) = self.pax_size.take() {
            size = s;
        }
        if kind == b'x' {
            self.pax = Some((Vec::with_capacity(size as usize), size));
        }
        let padded = size.div_ceil(BLOCK).saturating_mul(BLOCK);
        if kind == b'S' && h.as_gnu().is_some_and(|g| g.is_extended()) {
            self.sparse_ext = true;
            self.pending = padded;
        } else {
            self.skip = padded;
            if padded == 0
                && let Some((buf, _)) = self.pax.take()
            {
                self.pax_size = pax_size(&buf);
            }
        }
        Ok(())
    }
}

/// The `size` record of a PAX header's data, if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    tar::PaxExtensions::new(data)
        .filter_map(|e| e.ok())
        .find(|e| e.key_bytes() == b"size")
        .and_then(|e| e.value().ok()?.parse().ok())
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn refuses_a_huge_long_name_without_reading_it() {
        let mut head = header("././@LongLink", b'L', 1 << 40);
        head.extend_from_slice(&[b'a'; 512]);
        // Endless data behind the header: only the guard stops this early.
        let stream = io::Cursor::new(head).chain(io::repeat(b'a'));
        let mut a = tar::Archive::new(HeaderGuard::new(stream));
        let err = a.entries().unwrap().next().unwrap().err().unwrap();
        assert!(
            err.to_string()
                .contains("GNU long name entry claims 1099511627776 bytes"),
            "{err}"
        );
    }

    #[test]
    fn follows_pax_sizes_longnames_and_sparse_files() {
        // Every tar the writer makes, plus GNU sparse input, passes unchanged.
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(150));
        std::fs::write(&long, vec![1u8; 3000]).unwrap();
        let sparse = dir.path().join("sparse");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data", 4 << 20).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.sparse(true);
        b.append_path_with_name(&long, format!("{}/{}", "d".repeat(120), "x".repeat(150)))
            .unwrap();
        b.append_pax_extensions([("size", &b"5"[..]), ("mtime", &b"1.5"[..])])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0); // the PAX size (5) is the real one
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        b.append_data(&mut h, "paxsized", &b"hello"[..]).unwrap();
        b.append_path_with_name(&sparse, "sparse").unwrap();
        b.append_path_with_name(&long, "after").unwrap();
        let tar = b.into_inner().unwrap();
        let mut a = tar::Archive::new(HeaderGuard::new(tar.as_slice()));
        let names: Vec<_> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 4);
        assert_eq!(names[1], "paxsized");
        assert_eq!(names[3], "after");
        let guard = a.into_inner();
        assert!(
            guard.done && !guard.lost,
            "the guard followed every header to the end"
        );
    }
}
