//! Copying a layer tree exactly: owners, modes (setuid included), xattrs,
//! nanosecond mtimes, symlinks, hardlinks (within the tree), device nodes,
//! fifos, and sparse files with their holes (SEEK_DATA/SEEK_HOLE, data moved
//! with copy_file_range so filesystems with reflinks share blocks).
//! Used by the vfs backend (a full copy per layer) and by tests.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::Whence;

use super::error::{IoCtx, LayerError};
use super::fsmeta::{self, At, FileKind, Meta};

/// Copies the contents and attributes of directory `src` into the existing,
/// empty directory `dst`. Symlinks are copied, never followed.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), LayerError> {
    tree(src, dst, Files::Copy)
}

/// Recreates the directories of `src` (with their attributes) in the
/// existing, empty directory `dst` and hardlinks every other entry, as
/// Docker's overlay driver builds an image layer on its parent's root:
/// the files share inodes with `src`, so the result must only be changed
/// by replacing entries (the tar applier unlinks before writing), never by
/// writing into them.
pub fn link_tree(src: &Path, dst: &Path) -> Result<(), LayerError> {
    tree(src, dst, Files::Hardlink)
}

/// What happens to non-directories.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Copy,
    Hardlink,
}

fn tree(src: &Path, dst: &Path, files: Files) -> Result<(), LayerError> {
    let root_meta = fsmeta::read(src).ctx(|| format!("inspecting {}", src.display()))?;
    let mut links = HashMap::new();
    let dst_fd = open_dir(dst)?;
    copy_dir(src, dst, &dst_fd, &mut links, files)?;
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let parent_fd = open_dir(parent)?;
    let name = dst.file_name().unwrap_or(OsStr::new("."));
    set_attrs(
        At {
            dir: parent_fd.as_fd(),
            name,
        },
        &root_meta,
        dst,
    )
}

fn open_dir(path: &Path) -> Result<OwnedFd, LayerError> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening directory {}", path.display()))
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    dst_fd: &OwnedFd,
    links: &mut HashMap<(u64, u64), PathBuf>,
    files: Files,
) -> Result<(), LayerError> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .ctx(|| format!("listing {}", src.display()))?
        .collect::<Result<_, _>>()
        .ctx(|| format!("listing {}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let s = src.join(&name);
        let d = dst.join(&name);
        let md = fs::symlink_metadata(&s).ctx(|| format!("inspecting {}", s.display()))?;
        let m = fsmeta::from_metadata(&s, &md).ctx(|| format!("inspecting {}", s.display()))?;
        let at = At {
            dir: dst_fd.as_fd(),
            name: &name,
        };
        let create = || format!("creating {}", d.display());
        if files == Files::Hardlink && m.kind != FileKind::Dir {
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                s.as_path(),
                dst_fd.as_fd(),
                name.as_os_str(),
                AtFlags::empty(),
            )
            .ctx(|| format!("linking {} to {}", d.display(), s.display()))?;
            continue;
        }
        match m.kind {
            FileKind::Dir => {
                nix::sys::stat::mkdirat(
                    dst_fd.as_fd(),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                )
                .ctx(create)?;
                let sub = open_dir(&d)?;
                copy_dir(&s, &d, &sub, links, files)?;
            }
            FileKind::Regular => {
                if m.nlink > 1 {
                    if let Some(first) = links.get(&(m.dev, m.ino)) {
                        nix::unistd::linkat(
                            nix::fcntl::AT_FDCWD,
                            first.as_path(),
                            dst_fd.as_fd(),
                            name.as_os_str(),
                            AtFlags::empty(),
                        )
                        .ctx(|| format!("linking {} to {}", d.display(), first.display()))?;
                        continue;
                    }
                    links.insert((m.dev, m.ino), d.clone());
                }
                let out = at.create_file().ctx(create)?;
                let input = File::open(&s).ctx(|| format!("opening {}", s.display()))?;
                copy_sparse(&input, &out, m.size)
                    .ctx(|| format!("copying {} to {}", s.display(), d.display()))?;
            }
            FileKind::Symlink => {
                let target = m.link_target.clone().unwrap_or_default();
                nix::unistd::symlinkat(target.as_os_str(), dst_fd.as_fd(), name.as_os_str())
                    .ctx(create)?;
            }
            FileKind::Char | FileKind::Block | FileKind::Fifo | FileKind::Socket => {
                let kind = match m.kind {
                    FileKind::Char => SFlag::S_IFCHR,
                    FileKind::Block => SFlag::S_IFBLK,
                    FileKind::Fifo => SFlag::S_IFIFO,
                    _ => SFlag::S_IFSOCK,
                };
                nix::sys::stat::mknodat(
                    dst_fd.as_fd(),
                    name.as_os_str(),
                    kind,
                    Mode::from_bits_truncate(0o600),
                    m.rdev,
                )
                .ctx(create)?;
            }
        }
        set_attrs(at, &m, &d)?;
    }
    Ok(())
}

/// Owner, mode, xattrs, times of `m` onto `at`.
fn set_attrs(at: At<'_>, m: &Meta, shown: &Path) -> Result<(), LayerError> {
    let root = nix::unistd::geteuid().is_root();
    if root {
        at.chown(m.uid, m.gid)
            .ctx(|| format!("changing owner of {}", shown.display()))?;
    }
    if m.kind != FileKind::Symlink {
        let mode = if root { m.mode } else { m.mode & !0o6000 };
        at.chmod(mode)
            .ctx(|| format!("changing mode of {}", shown.display()))?;
    }
    for (key, value) in &m.xattrs {
        if let Err(e) = at.set_xattr(key, value) {
            if fsmeta::is_unsupported(&e) {
                tracing::warn!(path = %shown.display(), xattr = %key.to_string_lossy(), "xattr not supported; skipped");
                continue;
            }
            return Err(LayerError::io(
                format!(
                    "setting xattr {} on {}",
                    key.to_string_lossy(),
                    shown.display()
                ),
                e,
            ));
        }
    }
    at.set_times(m.mtime, m.mtime)
        .ctx(|| format!("setting times of {}", shown.display()))
}

/// Copies the data regions of `input` (size `size`) into `out`, leaving holes.
pub fn copy_sparse(input: &File, out: &File, size: u64) -> io::Result<()> {
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match nix::unistd::lseek(input.as_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => pos,
            Err(e) => return Err(e.into()),
        };
        let hole = match nix::unistd::lseek(input.as_fd(), data, Whence::SeekHole) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        copy_range(input, out, data as u64, (hole - data).max(0) as u64)?;
        pos = hole;
    }
    out.set_len(size)
}

fn copy_range(input: &File, out: &File, start: u64, len: u64) -> io::Result<()> {
    let mut off_in = start as i64;
    let mut off_out = start as i64;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: both fds are open for the duration of the call and the
        // offsets point to live i64s.
        let res = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut off_in,
                out.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        match Errno::result(res) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(Errno::EXDEV)
            | Err(Errno::ENOSYS)
            | Err(Errno::EINVAL)
            | Err(Errno::EOPNOTSUPP) => {
                return copy_range_rw(input, out, off_in as u64, left);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_rw(input: &File, out: &File, mut offset: u64, mut left: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = input.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        out.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
        left -= n as u64;
    }
    Ok(())
}

/// Bytes allocated and inodes used under `root` (hardlinks counted once).
pub fn disk_usage(root: &Path) -> Result<(u64, u64), LayerError> {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let md = fs::symlink_metadata(&dir).ctx(|| format!("inspecting {}", dir.display()))?;
        bytes = bytes.saturating_add(md.blocks() * 512);
        inodes += 1;
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let md = entry
                .metadata()
                .ctx(|| format!("inspecting {}", entry.path().display()))?;
            if md.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            bytes = bytes.saturating_add(md.blocks() * 512);
            inodes += 1;
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn link_tree_shares_files_and_recreates_dirs() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir(s.join("d")).unwrap();
        fs::set_permissions(s.join("d"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(s.join("d/f"), b"shared").unwrap();
        symlink("f", s.join("d/link")).unwrap();
        nix::unistd::mkfifo(&s.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path().join("linked");
        fs::create_dir(&d).unwrap();
        link_tree(s, &d).unwrap();
        assert!(
            crate::layer::changes_between(&d, Some(s))
                .unwrap()
                .is_empty()
        );
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&s.join("d/f")), ino(&d.join("d/f")));
        assert_eq!(ino(&s.join("d/link")), ino(&d.join("d/link")));
        assert_eq!(ino(&s.join("fifo")), ino(&d.join("fifo")));
        assert_ne!(ino(&s.join("d")), ino(&d.join("d")), "directories are new");
        assert_eq!(
            fs::symlink_metadata(d.join("d")).unwrap().mode() & 0o7777,
            0o750
        );
        // Removing in the link tree leaves the source alone.
        fs::remove_file(d.join("d/f")).unwrap();
        assert_eq!(fs::read(s.join("d/f")).unwrap(), b"shared");
    }

    #[test]
    fn copies_everything_and_keeps_holes() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("d/f"), b"hello").unwrap();
        fs::set_permissions(s.join("d/f"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::hard_link(s.join("d/f"), s.join("hl")).unwrap();
        symlink("../nowhere", s.join("d/link")).unwrap();
        nix::unistd::mkfifo(&s.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        xattr::set(s.join("d/f"), "user.test", b"v").unwrap();
        let mut sparse = File::create(s.join("sparse")).unwrap();
        sparse.seek(SeekFrom::Start(64 << 20)).unwrap();
        sparse.write_all(b"tail").unwrap();
        drop(sparse);

        let dst = tempfile::tempdir().unwrap();
        let d = dst.path().join("copy");
        fs::create_dir(&d).unwrap();
        copy_tree(s, &d).unwrap();
        assert!(
            crate::layer::changes_between(&d, Some(s))
                .unwrap()
                .is_empty()
        );
        assert_eq!(fs::read(d.join("d/f")).unwrap(), b"hello");
        assert_eq!(
            fs::symlink_metadata(d.join("d/f")).unwrap().mode() & 0o7777,
            0o4751
        );
        assert_eq!(
            fs::symlink_metadata(d.join("d/f")).unwrap().ino(),
            fs::symlink_metadata(d.join("hl")).unwrap().ino()
        );
        assert_eq!(
            xattr::get(d.join("d/f"), "user.test").unwrap().unwrap(),
            b"v"
        );
        let sp = fs::metadata(d.join("sparse")).unwrap();
        assert_eq!(sp.len(), (64 << 20) + 4);
        assert!(
            sp.blocks() * 512 < 1 << 20,
            "holes were filled: {} blocks",
            sp.blocks()
        );
    }
}
