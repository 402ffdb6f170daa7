//! Resolving tar entry names beneath a layer root without ever following a
//! symlink: names are split into plain components (no `..`, no NUL), and
//! directories are opened one component at a time with
//! `O_NOFOLLOW|O_DIRECTORY` relative to the previous one. A symlink met on
//! the way is a refusal, wherever it came from (the parent layer or an
//! earlier entry of the same tar).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use super::fsmeta::is_dir_mode;

/// Longest file name Linux filesystems accept.
const NAME_MAX: usize = 255;

/// Splits a tar entry name into plain components.
///
/// A leading `/` is dropped (as Docker and GNU tar do: `/etc/x` lands at
/// `<root>/etc/x`), `.` components and empty ones are skipped; `..`
/// anywhere, NUL bytes and over-long components are refused with the reason.
/// An empty result names the root itself.
pub fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.contains(&0) {
        return Err("its name contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(
                    "its name has a `..` component, which would leave the layer root".into(),
                );
            }
            p if p.len() > NAME_MAX => {
                return Err(format!(
                    "a component of its name is {} bytes long (the limit is {NAME_MAX})",
                    p.len()
                ));
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Ok(out)
}

/// Joins components for messages and set keys (`a/b/c`).
pub fn display(comps: &[OsString]) -> String {
    let mut p = PathBuf::new();
    for c in comps {
        p.push(c);
    }
    p.to_string_lossy().into_owned()
}

/// Why a directory beneath the root could not be reached safely.
#[derive(Debug)]
pub enum Refusal {
    /// A component (given as a path below the root) is a symlink.
    Symlink(String),
    /// A component exists but is not a directory.
    NotDir(String),
    Io(String, io::Error),
}

impl Refusal {
    pub fn describe(&self) -> String {
        match self {
            Refusal::Symlink(p) => format!(
                "{p:?} in the layer is a symlink; writing through a symlink could leave the layer root"
            ),
            Refusal::NotDir(p) => format!("{p:?} in the layer is not a directory"),
            Refusal::Io(p, e) => format!("cannot open directory {p:?} in the layer: {e}"),
        }
    }
}

/// An open layer root.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Beneath {
    /// Opens `root` (which must be a directory; the root path itself is
    /// trusted and may contain symlinks).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory `comps` below the root. Missing directories are
    /// created (mode 0755) when `create` is set, else `Ok(None)`.
    pub fn dir(&self, comps: &[OsString], create: bool) -> Result<Option<OwnedFd>, Refusal> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| Refusal::Io(".".into(), e))?;
        for (i, comp) in comps.iter().enumerate() {
            let here = || display(&comps[..=i]);
            let next = match open_dir_at(cur.as_fd(), comp) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(
                        cur.as_fd(),
                        comp.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(Refusal::Io(here(), e.into())),
                    }
                    open_dir_at(cur.as_fd(), comp)
                        .map_err(|e| classify(cur.as_fd(), comp, e, here()))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(classify(cur.as_fd(), comp, e, here())),
            };
            cur = next;
        }
        Ok(Some(cur))
    }
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty())
}

fn classify(dir: BorrowedFd<'_>, name: &OsStr, err: Errno, here: String) -> Refusal {
    if matches!(err, Errno::ELOOP | Errno::ENOTDIR) {
        if let Ok(st) = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return Refusal::Symlink(here);
            }
            return Refusal::NotDir(here);
        }
    }
    Refusal::Io(here, err.into())
}

/// Removes `name` in `dir` and, for a directory, everything below it,
/// without following symlinks. Returns false when nothing was there.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let st = match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if is_dir_mode(st.st_mode) {
        let sub = open_dir_at(dir, name)?;
        for child in list_dir(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    } else {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(true)
}

/// Names in an open directory (without `.` and `..`), sorted.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let fd = open_dir_at(dir, OsStr::new("."))?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Empties directory `comps` (opened as `dir`) of everything not in `keep`,
/// descending into kept directories: the OCI opaque-whiteout rule, where
/// entries unpacked from the same layer survive and everything from lower
/// layers goes.
pub fn clear_except(
    dir: BorrowedFd<'_>,
    comps: &[OsString],
    keep: &HashSet<Vec<OsString>>,
) -> io::Result<()> {
    for name in list_dir(dir)? {
        let mut child = comps.to_vec();
        child.push(name.clone());
        if keep.contains(&child) {
            let st = nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if is_dir_mode(st.st_mode) {
                let sub = open_dir_at(dir, &name)?;
                clear_except(sub.as_fd(), &child, keep)?;
            }
        } else {
            remove_all_at(dir, &name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn splits_and_refuses_names() {
        let ok = |s: &str| components(s.as_bytes()).unwrap();
        assert_eq!(ok("a/b/c"), ["a", "b", "c"]);
        assert_eq!(ok("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(ok("./a//b/./"), ["a", "b"]);
        assert!(ok("./").is_empty());
        assert!(components(b"../x").unwrap_err().contains(".."));
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"a/..").is_err());
        assert!(components(b"a\0b").unwrap_err().contains("NUL"));
        assert!(components("x".repeat(256).as_bytes()).is_err());
        assert_eq!(ok("...")[0], "...");
    }

    #[test]
    fn never_walks_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("..", root.path().join("up")).unwrap();
        fs::write(root.path().join("file"), b"x").unwrap();
        let b = Beneath::open(root.path()).unwrap();
        let c = |s: &str| components(s.as_bytes()).unwrap();
        assert!(matches!(b.dir(&c("etc"), true), Err(Refusal::Symlink(p)) if p == "etc"));
        assert!(matches!(b.dir(&c("up/x"), true), Err(Refusal::Symlink(_))));
        assert!(matches!(b.dir(&c("file/x"), true), Err(Refusal::NotDir(_))));
        assert!(b.dir(&c("new/deeper"), false).unwrap().is_none());
        assert!(b.dir(&c("new/deeper"), true).unwrap().is_some());
        assert!(root.path().join("new/deeper").is_dir());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_all_does_not_follow_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"k").unwrap();
        fs::create_dir_all(root.path().join("d/e")).unwrap();
        fs::write(root.path().join("d/e/f"), b"f").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("d/link")).unwrap();
        let b = Beneath::open(root.path()).unwrap();
        assert!(remove_all_at(b.fd(), OsStr::new("d")).unwrap());
        assert!(!root.path().join("d").exists());
        assert!(outside.path().join("keep").exists());
        assert!(!remove_all_at(b.fd(), OsStr::new("d")).unwrap());
    }

    #[test]
    fn clear_except_keeps_unpacked_entries() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("d/sub")).unwrap();
        fs::write(root.path().join("d/old"), b"").unwrap();
        fs::write(root.path().join("d/new"), b"").unwrap();
        fs::write(root.path().join("d/sub/old"), b"").unwrap();
        fs::write(root.path().join("d/sub/new"), b"").unwrap();
        let b = Beneath::open(root.path()).unwrap();
        let c = |s: &str| components(s.as_bytes()).unwrap();
        let keep: HashSet<_> = [c("d/new"), c("d/sub"), c("d/sub/new")]
            .into_iter()
            .collect();
        let d = b.dir(&c("d"), false).unwrap().unwrap();
        clear_except(d.as_fd(), &c("d"), &keep).unwrap();
        let mut left: Vec<_> = walk(root.path());
        left.sort();
        assert_eq!(left, ["d", "d/new", "d/sub", "d/sub/new"]);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out
    }
}
