//! File metadata as layers compare and carry it: type, mode, owner, device
//! number, size, mtime in nanoseconds, symlink target and xattrs. Reading is
//! path based and never follows a final symlink; writing works on a
//! `(directory fd, name)` pair so it cannot be redirected by a symlink.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::whiteout::OVERLAY_XATTR_PREFIX;

/// The file types a layer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl FileKind {
    pub fn of(ft: &fs::FileType) -> FileKind {
        if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::Char
        } else if ft.is_block_device() {
            FileKind::Block
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Regular
        }
    }
}

/// A point in time with nanoseconds (tar PAX `mtime` keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn timespec(self) -> TimeSpec {
        TimeSpec::new(self.sec, i64::from(self.nsec))
    }

    /// PAX decimal form: `1700000000` or `1700000000.000000123`.
    pub fn pax(self) -> String {
        if self.nsec == 0 {
            self.sec.to_string()
        } else {
            format!("{}.{:09}", self.sec, self.nsec)
        }
    }

    /// Parses a PAX time value (`123`, `123.5`, `-1.25`).
    pub fn parse_pax(s: &str) -> Option<Timestamp> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let sec: i64 = whole.parse().ok()?;
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let nsec: u32 = digits.parse().ok()?;
        if whole.starts_with('-') && nsec > 0 {
            // -1.25 is 1.25 s before the epoch: sec -2, nsec 0.75 s.
            Some(Timestamp {
                sec: sec - 1,
                nsec: 1_000_000_000 - nsec,
            })
        } else {
            Some(Timestamp { sec, nsec })
        }
    }
}

/// Everything layers compare about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Allocated bytes (holes excluded).
    pub allocated: u64,
    pub link_target: Option<OsString>,
    /// Sorted by name; overlay's own `trusted.overlay.*` are never included.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    /// True when `other` differs in what Docker's `ChangesDirs` compares
    /// (plus the link target and every xattr): type, mode, owner, xattrs,
    /// and for non-directories also device number, size, mtime (ns) and
    /// symlink target. Directory mtime and size are ignored: they change
    /// whenever a child does (moby#9874).
    pub fn differs_from(&self, other: &Meta) -> bool {
        if self.kind != other.kind
            || self.mode != other.mode
            || self.uid != other.uid
            || self.gid != other.gid
            || self.xattrs != other.xattrs
        {
            return true;
        }
        self.kind != FileKind::Dir
            && (self.rdev != other.rdev
                || self.size != other.size
                || self.mtime != other.mtime
                || self.link_target != other.link_target)
    }

    /// Device major/minor for tar headers.
    pub fn major_minor(&self) -> (u32, u32) {
        (libc::major(self.rdev), libc::minor(self.rdev))
    }
}

/// Reads the metadata of `path` without following a final symlink.
pub fn read(path: &Path) -> io::Result<Meta> {
    let md = fs::symlink_metadata(path)?;
    from_metadata(path, &md)
}

/// Builds a [`Meta`] from an lstat result (reads link target and xattrs).
pub fn from_metadata(path: &Path, md: &fs::Metadata) -> io::Result<Meta> {
    let kind = FileKind::of(&md.file_type());
    let link_target = if kind == FileKind::Symlink {
        Some(fs::read_link(path)?.into_os_string())
    } else {
        None
    };
    Ok(Meta {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        mtime: Timestamp {
            sec: md.mtime(),
            nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        },
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
        allocated: md.blocks().saturating_mul(512),
        link_target,
        xattrs: read_xattrs(path)?,
    })
}

/// All xattrs of `path` (not following symlinks) except overlay's own.
/// A filesystem without xattr support has none.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
            continue;
        }
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push((name, value)),
            Ok(None) => {}
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// ENOTSUP / EOPNOTSUPP: the filesystem (or file type) has no xattrs.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

/// One name inside an open directory: every change goes through the
/// directory's fd, so a symlink elsewhere cannot redirect it.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a OsStr,
}

impl At<'_> {
    /// A path naming the entry through `/proc/self/fd` (for the xattr calls,
    /// which have no `*at` form); the final component is never followed.
    pub fn proc_path(&self) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(self.name);
        p
    }

    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::fchownat(
            self.dir,
            self.name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    }

    /// Sets permission bits (callers never call this on a symlink).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        nix::sys::stat::fchmodat(
            self.dir,
            self.name,
            Mode::from_bits_truncate(mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(io::Error::from)
    }

    pub fn set_times(&self, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
        nix::sys::stat::utimensat(
            self.dir,
            self.name,
            &atime.timespec(),
            &mtime.timespec(),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
    }

    pub fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        xattr::set(self.proc_path(), name, value)
    }

    pub fn stat(&self) -> io::Result<Option<nix::sys::stat::FileStat>> {
        match nix::sys::stat::fstatat(self.dir, self.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// True when a `stat` mode is a directory.
pub fn is_dir_mode(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip() {
        for (s, t) in [
            ("0", Timestamp { sec: 0, nsec: 0 }),
            (
                "1700000000",
                Timestamp {
                    sec: 1_700_000_000,
                    nsec: 0,
                },
            ),
            (
                "1700000000.000000123",
                Timestamp {
                    sec: 1_700_000_000,
                    nsec: 123,
                },
            ),
            (
                "1.5",
                Timestamp {
                    sec: 1,
                    nsec: 500_000_000,
                },
            ),
        ] {
            assert_eq!(Timestamp::parse_pax(s), Some(t), "{s}");
        }
        let t = Timestamp { sec: 5, nsec: 42 };
        assert_eq!(Timestamp::parse_pax(&t.pax()), Some(t));
        assert_eq!(
            Timestamp::parse_pax("-1.25"),
            Some(Timestamp {
                sec: -2,
                nsec: 750_000_000
            })
        );
        assert_eq!(Timestamp::parse_pax("1.2x"), None);
        assert_eq!(Timestamp::parse_pax("abc"), None);
    }

    #[test]
    fn directories_ignore_mtime_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let a = read(dir.path()).unwrap();
        let mut b = a.clone();
        b.mtime.sec += 10;
        b.size += 4096;
        assert!(!a.differs_from(&b));
        b.mode ^= 0o001;
        assert!(a.differs_from(&b));
        fs::write(dir.path().join("f"), b"x").unwrap();
        let f = read(&dir.path().join("f")).unwrap();
        let mut g = f.clone();
        g.mtime.nsec = (g.mtime.nsec + 1) % 1_000_000_000;
        assert!(f.differs_from(&g), "file mtime nanoseconds count");
    }
}
