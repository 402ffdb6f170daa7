//! Layer tars built by tests, entry by entry, with the `tar` crate.

use std::io::Write;

use tar::{Builder, EntryType, Header};

pub struct TarBuild {
    b: Builder<Vec<u8>>,
}

impl Default for TarBuild {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

impl TarBuild {
    pub fn new() -> Self {
        TarBuild {
            b: Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, name: &str, mode: u32) -> Self {
        let mut h = header(EntryType::Directory, mode, 0);
        self.b
            .append_data(
                &mut h,
                format!("{}/", name.trim_end_matches('/')),
                std::io::empty(),
            )
            .unwrap();
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_with(name, data, 0o644, 0, 0)
    }

    pub fn file_with(mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, name, data).unwrap();
        self
    }

    /// A file with an xattr (PAX `SCHILY.xattr.<key>`).
    pub fn file_xattr(mut self, name: &str, data: &[u8], key: &str, value: &[u8]) -> Self {
        let k = format!("SCHILY.xattr.{key}");
        self.b.append_pax_extensions([(k.as_str(), value)]).unwrap();
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        self.b.append_data(&mut h, name, data).unwrap();
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, name, target).unwrap();
        self
    }

    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, name, target).unwrap();
        self
    }

    pub fn fifo(mut self, name: &str) -> Self {
        let mut h = header(EntryType::Fifo, 0o600, 0);
        self.b.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }

    pub fn char_device(mut self, name: &str, major: u32, minor: u32) -> Self {
        let mut h = header(EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }

    pub fn whiteout(self, name: &str) -> Self {
        let (dir, base) = name
            .rsplit_once('/')
            .map(|(d, b)| (format!("{d}/"), b))
            .unwrap_or((String::new(), name));
        self.file(&format!("{dir}.wh.{base}"), b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// Gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// (name, type, size, contents) of every entry, in order.
pub fn list(tar: &[u8]) -> Vec<(String, char, u64, Vec<u8>)> {
    use std::io::Read;
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let kind = e.header().entry_type().as_byte() as char;
            let size = e.size();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, kind, size, data)
        })
        .collect()
}

/// Entry names, in order.
pub fn names(tar: &[u8]) -> Vec<String> {
    list(tar).into_iter().map(|e| e.0).collect()
}
