//! Mount plumbing the directory backends share: which paths are mount
//! points (`/proc/self/mountinfo`), unmounting, and `mount(2)` with paths
//! relative to a directory.
//!
//! Overlay mount data must fit in one page. Docker keeps it short by naming
//! lower layers relative to the store (`l/<26 chars>`) and mounting from a
//! forked helper that changes into the store first. thinsnap does the same
//! with [`mount_from`]: a `fork()`ed child calls `chdir` and `mount` (both
//! async-signal-safe; everything is allocated before the fork) and exits
//! with the errno. The calling process is multi-threaded and never changes
//! its own working directory, which all its threads share.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

/// Mount points at or below `dir`, deepest first (the order to unmount them).
pub fn mount_points_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// True when `path` is a mount point now. One `statx` (its mount-root
/// attribute, exact for bind mounts too) instead of reading all of
/// mountinfo, whose size grows with every container on the host; kernels
/// before 5.8 fall back to mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    match statx_mount_root(path) {
        Some(root) => root,
        None => std::fs::read_to_string("/proc/self/mountinfo")
            .map(|info| parse_mountinfo(&info).iter().any(|m| m == path))
            .unwrap_or(false),
    }
}

/// `Some(is mount root)` from statx, `Some(false)` for a missing path,
/// `None` when the kernel does not report the attribute.
fn statx_mount_root(path: &Path) -> Option<bool> {
    const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `buf`
    // is a plain-data struct the kernel fills in; both are valid for it.
    let (r, buf) = unsafe {
        let mut buf: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            &mut buf,
        );
        (r, buf)
    };
    if r != 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Some(false),
            _ => None,
        };
    }
    (buf.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT != 0)
        .then_some(buf.stx_attributes & STATX_ATTR_MOUNT_ROOT != 0)
}

/// Mount points listed in mountinfo text (field 5, octal escapes decoded).
pub fn parse_mountinfo(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(m))))
        .collect()
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Unmounts `path`; `detach` makes it lazy (open files keep it alive but it
/// leaves the namespace at once). Not mounted is not an error.
pub fn unmount(path: &Path, detach: bool) -> io::Result<()> {
    let flags = if detach {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match nix::mount::umount2(path, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) if !is_mount_point(path) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unmounts everything at or below `dir` (deepest first); returns what it
/// unmounted. Used by `cleanup` and by recovery.
pub fn unmount_all_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let points = mount_points_below(dir)?;
    for p in &points {
        unmount(p, true)
            .map_err(|e| io::Error::new(e.kind(), format!("unmounting {}: {e}", p.display())))?;
    }
    Ok(points)
}

/// The system page size: the most mount data the kernel accepts is one page.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as usize)
        .unwrap_or(4096)
}

/// True when `data` (plus its NUL) fits in the page the kernel copies.
pub fn fits_one_page(data: &str) -> bool {
    data.len() < page_size()
}

/// Appends an SELinux context to mount data, as Docker's `FormatMountLabel`.
pub fn with_mount_label(data: String, label: Option<&str>) -> String {
    match label {
        Some(l) if !l.is_empty() => {
            if data.is_empty() {
                format!("context=\"{l}\"")
            } else {
                format!("{data},context=\"{l}\"")
            }
        }
        _ => data,
    }
}

/// `mount(source, target, fstype, flags, data)` with relative paths in
/// `data` (and `target`) resolved in `dir`: done in a forked child that
/// changes into `dir` first, so this process keeps its working directory.
pub fn mount_from(
    dir: &Path,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> io::Result<()> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let dir_c = cstr(dir.as_os_str().as_bytes())?;
    let source_c = cstr(source.as_bytes())?;
    let target_c = cstr(target.as_os_str().as_bytes())?;
    let fstype_c = cstr(fstype.as_bytes())?;
    let data_c = cstr(data.as_bytes())?;
    let raw_flags = flags.bits();
    // SAFETY: the child only calls chdir, mount and _exit, which are
    // async-signal-safe, on memory allocated before the fork.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Child => unsafe {
            let code = if libc::chdir(dir_c.as_ptr()) != 0
                || libc::mount(
                    source_c.as_ptr(),
                    target_c.as_ptr(),
                    fstype_c.as_ptr(),
                    raw_flags,
                    data_c.as_ptr().cast(),
                ) != 0
            {
                *libc::__errno_location()
            } else {
                0
            };
            libc::_exit(code & 0xff)
        },
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, code)) => return Err(io::Error::from_raw_os_error(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Err(io::Error::other(format!(
                        "the mount helper process was killed by {sig}"
                    )));
                }
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        },
    }
}

/// Plain `mount(2)` with absolute paths.
pub fn mount_here(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> io::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        flags,
        if data.is_empty() { None } else { Some(data) },
    )
    .map_err(io::Error::from)
}

/// True when the kernel lists `name` in `/proc/filesystems`.
pub fn kernel_has_filesystem(name: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|list| filesystems_list_has(&list, name))
        .unwrap_or(false)
}

/// Whether `/proc/filesystems` text lists `name`.
pub fn filesystems_list_has(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// Overlay options thinsnap always passes where the kernel knows them, so
/// an upper directory holds exactly what the layer changed and can be
/// exported natively: no inode index, no redirects (renaming a lower
/// directory fails with EXDEV instead of writing a redirect xattr), no
/// metadata-only copy-up. Each is recognised when the overlay module has
/// the matching parameter.
pub fn overlay_base_options() -> Vec<String> {
    overlay_base_options_in(Path::new("/sys/module/overlay/parameters"))
}

pub fn overlay_base_options_in(params: &Path) -> Vec<String> {
    ["index", "redirect_dir", "metacopy"]
        .iter()
        .filter(|p| params.join(p).exists())
        .map(|p| format!("{p}=off"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_decoded() {
        let info = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        let pts = parse_mountinfo(info);
        assert_eq!(
            pts,
            [PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
        assert_eq!(unescape("a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
    }

    #[test]
    fn filesystems_list() {
        let list = "nodev\tsysfs\nnodev\toverlay\n\text4\n";
        assert!(filesystems_list_has(list, "overlay"));
        assert!(filesystems_list_has(list, "ext4"));
        assert!(!filesystems_list_has(list, "aufs"));
    }

    #[test]
    fn labels_and_page_limit() {
        assert_eq!(with_mount_label("a=b".into(), None), "a=b");
        assert_eq!(
            with_mount_label("a=b".into(), Some("system_u:object_r:x:s0")),
            "a=b,context=\"system_u:object_r:x:s0\""
        );
        assert!(fits_one_page("x"));
        assert!(!fits_one_page(&"x".repeat(page_size())));
    }

    #[test]
    fn base_options_follow_module_parameters() {
        let dir = tempfile::tempdir().unwrap();
        assert!(overlay_base_options_in(dir.path()).is_empty());
        std::fs::write(dir.path().join("index"), "N").unwrap();
        std::fs::write(dir.path().join("metacopy"), "N").unwrap();
        assert_eq!(
            overlay_base_options_in(dir.path()),
            ["index=off", "metacopy=off"]
        );
    }
}
