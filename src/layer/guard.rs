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

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// Largest GNU long name/link or PAX header entry accepted.
pub const MAX_META_ENTRY: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// What the guard saw for the entry the parser returned last: its PAX
/// header data, raw. The `tar` crate splits PAX records at newlines, which
/// breaks binary values (xattrs such as `security.capability`) and names
/// containing a newline; [`parse_records`] reads them by their lengths.
#[derive(Debug, Default)]
pub struct Seen {
    pub pax: Option<Vec<u8>>,
    /// The guard lost track of the stream; `pax` is not reliable.
    pub lost: bool,
}

pub type SharedSeen = Rc<RefCell<Seen>>;

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
    /// A complete PAX header waiting for its entry.
    pending_pax: Option<Vec<u8>>,
    seen: SharedSeen,
}

impl<R: Read> HeaderGuard<R> {
    pub fn new(inner: R) -> Self {
        Self::with_seen(inner, SharedSeen::default())
    }

    /// A guard that reports each entry's raw PAX data into `seen`.
    pub fn with_seen(inner: R, seen: SharedSeen) -> Self {
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
            pending_pax: None,
            seen,
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
                    self.pax_done(buf);
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

    fn pax_done(&mut self, buf: Vec<u8>) {
        self.pax_size = pax_size(&buf);
        self.pending_pax = Some(buf);
    }

    fn lose_track(&mut self) {
        self.done = true;
        self.lost = true;
        self.seen.borrow_mut().lost = true;
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
            self.lose_track();
            return Ok(());
        }
        let Ok(mut size) = h.entry_size() else {
            self.lose_track();
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
        if !is_meta {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
            self.seen.borrow_mut().pax = self.pending_pax.take();
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
                self.pax_done(buf);
            }
        }
        Ok(())
    }
}

/// The `size` record of a PAX header's data, if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    parse_records(data)
        .ok()?
        .into_iter()
        .rev()
        .find(|(k, _)| k == b"size")
        .and_then(|(_, v)| std::str::from_utf8(&v).ok()?.parse().ok())
}

/// One PAX record: key and raw value.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

/// A PAX header's records, `"<len> <key>=<value>\n"` each, read by length
/// so values may hold any byte. Later records override earlier ones.
pub fn parse_records(mut data: &[u8]) -> Result<Vec<PaxRecord>, String> {
    let mut out = Vec::new();
    while !data.is_empty() && data.iter().any(|b| *b != 0) {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a PAX record has no length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record length is not a number")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(format!("a PAX record claims {len} bytes"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a PAX record has no `=`")?;
        out.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
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
    fn pax_records_are_read_by_length() {
        let value = b"bin\nary\0=";
        let mut data = Vec::new();
        let rec = |k: &str, v: &[u8]| {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while format!("{len}").len() + rest != len {
                len += 1;
            }
            let mut r = format!("{len} {k}=").into_bytes();
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        data.extend(rec("SCHILY.xattr.security.capability", value));
        data.extend(rec("path", b"a\nb"));
        let got = parse_records(&data).unwrap();
        assert_eq!(got[0].1, value);
        assert_eq!(got[1], (b"path".to_vec(), b"a\nb".to_vec()));
        assert!(parse_records(b"99 x=y\n").is_err());
        assert!(parse_records(b"abc").is_err());
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
