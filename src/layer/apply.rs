//! OCI layer tars in, safely.
//!
//! Every entry name is split into plain components (`..` and NUL refused, a
//! leading `/` dropped) and its directory is opened one component at a time
//! without following symlinks ([`Beneath`]); the entry itself is created
//! with `*at` calls relative to that directory, after unlinking whatever
//! non-directory was there. Hardlink targets are resolved the same way and
//! must already exist inside the layer. Sizes are checked against the free
//! space of the layer's filesystem before any data is read, runs of zero
//! blocks become holes, setuid/setgid bits and ownership are kept only when
//! running as root, device nodes need root (`mknod`), and overlay's own
//! `trusted.overlay.*` xattrs are never accepted from a tar.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::WhiteoutFormat;
use super::compress;
use super::error::{IoCtx, LayerError};
use super::fsmeta::{At, Timestamp, is_dir_mode};
use super::safepath::{self, Beneath, Refusal};
use super::whiteout::{self, Marker, OVERLAY_OPAQUE_XATTR, OVERLAY_XATTR_PREFIX};

/// Block size for hole detection: a zero-filled, aligned block of this size
/// is skipped instead of written.
const HOLE_BLOCK: usize = 4096;

/// How an apply may touch ownership and special files.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    /// Keep uid/gid and setuid/setgid bits from the tar (root only).
    pub keep_owner: bool,
}

impl Privileges {
    pub fn current() -> Self {
        Privileges {
            keep_owner: nix::unistd::geteuid().is_root(),
        }
    }
}

/// What one entry carries besides its name and type.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Applier<'r> {
    root: &'r Beneath,
    format: WhiteoutFormat,
    privileges: Privileges,
    /// Free bytes on the layer's filesystem when the apply started.
    free: u64,
    /// Paths unpacked from this tar (opaque markers keep them).
    unpacked: HashSet<Vec<OsString>>,
    /// Directory times, set last (creating children changes them).
    dir_times: std::cell::RefCell<Vec<(Vec<OsString>, Timestamp)>>,
    /// aufs hardlink directory extracted into the root, removed at the end.
    aufs_links: bool,
    applied: u64,
}

/// Applies a (plain, gzip or zstd) layer tar under `root`; returns the sum
/// of the entries' data sizes.
pub fn apply_tar(
    root: &Path,
    tar: &mut dyn Read,
    format: WhiteoutFormat,
) -> Result<u64, LayerError> {
    apply_tar_with(root, tar, format, Privileges::current())
}

pub fn apply_tar_with(
    root: &Path,
    tar: &mut dyn Read,
    format: WhiteoutFormat,
    privileges: Privileges,
) -> Result<u64, LayerError> {
    let beneath = Beneath::open(root).ctx(|| format!("opening layer root {}", root.display()))?;
    let vfs = nix::sys::statvfs::fstatvfs(beneath.fd())
        .ctx(|| format!("reading free space of {}", root.display()))?;
    let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
    let (_, reader) = compress::decompress(tar)?;
    let mut archive = tar::Archive::new(reader);
    let mut applier = Applier {
        root: &beneath,
        format,
        privileges,
        free,
        unpacked: HashSet::new(),
        dir_times: std::cell::RefCell::new(Vec::new()),
        aufs_links: false,
        applied: 0,
    };
    let mut last: Option<String> = None;
    let entries = archive.entries().map_err(|e| LayerError::Corrupt {
        after: None,
        source: e,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| LayerError::Corrupt {
            after: last.clone(),
            source: e,
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        applier.entry(&mut entry, &name).map_err(|e| match e {
            // An I/O error while reading entry data is a truncated stream.
            LayerError::Io { source, .. } if is_stream_error(&source) => LayerError::Corrupt {
                after: Some(name.clone()),
                source,
            },
            other => other,
        })?;
        last = Some(name);
    }
    applier.finish()
}

fn is_stream_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
        || e.get_ref()
            .is_some_and(|inner| inner.to_string().contains("stream"))
}

impl Applier<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let comps =
            safepath::components(&raw).map_err(|reason| LayerError::unsafe_entry(name, reason))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let attrs = self.attrs(entry, name)?;
        let Some((last, parent)) = comps.split_last() else {
            // The root itself: only a directory may describe it.
            if kind.is_dir() {
                return self.set_attrs(
                    At {
                        dir: self.root.fd(),
                        name: OsStr::new("."),
                    },
                    &attrs,
                    name,
                    &[],
                    true,
                );
            }
            return Err(LayerError::bad_entry(
                name,
                "names the layer root but is not a directory",
            ));
        };

        if let Some(skip) = self.markers(&comps, parent, last, &attrs, name)? {
            return skip;
        }

        let dir = self.parent_dir(parent, name, true)?.ok_or_else(|| {
            LayerError::bad_entry(name, "its parent directory could not be created")
        })?;
        let at = At {
            dir: dir.as_fd(),
            name: last.as_os_str(),
        };
        let existing = at.stat().ctx(|| format!("inspecting {name:?}"))?;
        let is_dir_entry = kind.is_dir();
        if let Some(st) = existing {
            if !(is_dir_entry && is_dir_mode(st.st_mode)) {
                safepath::remove_all_at(dir.as_fd(), last).ctx(|| format!("replacing {name:?}"))?;
            }
        }

        let io_ctx = || format!("creating {name:?}");
        let mut is_link = false;
        match kind {
            tar::EntryType::Directory => {
                if existing.is_none_or(|st| !is_dir_mode(st.st_mode)) {
                    nix::sys::stat::mkdirat(
                        dir.as_fd(),
                        last.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .ctx(io_ctx)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                if size > self.free {
                    return Err(LayerError::TooLarge {
                        entry: name.to_string(),
                        claimed: size,
                        available: self.free,
                    });
                }
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    last.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .ctx(io_ctx)?;
                let file = File::from(fd);
                write_sparse(entry, &file, size).ctx(|| format!("writing {name:?}"))?;
                self.applied = self.applied.saturating_add(size);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::bad_entry(name, "symlink without a target"))?
                    .into_owned();
                if target.contains(&0) || target.is_empty() {
                    return Err(LayerError::bad_entry(
                        name,
                        "symlink target is empty or contains a NUL byte",
                    ));
                }
                nix::unistd::symlinkat(OsStr::from_bytes(&target), dir.as_fd(), last.as_os_str())
                    .ctx(io_ctx)?;
                is_link = true;
            }
            tar::EntryType::Link => {
                self.hardlink(entry, name, dir.as_fd(), last)?;
                self.unpacked.insert(comps.clone());
                // A hardlink shares its target's inode and metadata.
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let h = entry.header();
                        let dev_field = |v: io::Result<Option<u32>>, raw: &[u8], what: &str| {
                            lenient(v.map(|o| u64::from(o.unwrap_or(0))), raw)
                                .map(|n| n as u32)
                                .map_err(|e| {
                                    LayerError::bad_entry(
                                        name,
                                        format!("unreadable device {what}: {e}"),
                                    )
                                })
                        };
                        let (raw_major, raw_minor) = match h.as_ustar() {
                            Some(u) => (u.dev_major.to_vec(), u.dev_minor.to_vec()),
                            None => match h.as_gnu() {
                                Some(g) => (g.dev_major.to_vec(), g.dev_minor.to_vec()),
                                None => (Vec::new(), Vec::new()),
                            },
                        };
                        let major = dev_field(h.device_major(), &raw_major, "major")?;
                        let minor = dev_field(h.device_minor(), &raw_minor, "minor")?;
                        let sflag = if kind == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, libc::makedev(major, minor))
                    }
                };
                nix::sys::stat::mknodat(
                    dir.as_fd(),
                    last.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| match e {
                    Errno::EPERM => LayerError::bad_entry(
                        name,
                        "creating device nodes needs root (CAP_MKNOD); apply this layer as root",
                    ),
                    other => LayerError::io(io_ctx(), other.into()),
                })?;
            }
            other => {
                return Err(LayerError::bad_entry(
                    name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        }
        self.set_attrs(at, &attrs, name, &comps, !is_link)?;
        self.unpacked.insert(comps);
        Ok(())
    }

    /// Handles whiteouts, opaque markers and aufs metadata per format.
    /// `Some(result)` when the entry was fully handled here.
    fn markers(
        &mut self,
        comps: &[OsString],
        parent: &[OsString],
        last: &OsStr,
        attrs: &Attrs,
        name: &str,
    ) -> Result<Option<Result<(), LayerError>>, LayerError> {
        let marker = whiteout::classify(last);
        if self.format == WhiteoutFormat::Aufs {
            // aufs layer directories keep every `.wh.` name as-is, but a
            // whiteout still must not name `.` or `..`.
            if let Marker::Whiteout(t) = marker {
                if !whiteout::valid_target(t) {
                    return Err(LayerError::unsafe_entry(name, "whiteout of `.` or `..`"));
                }
            }
            return Ok(None);
        }
        match marker {
            Marker::None => {
                if comps.first().is_some_and(|c| c == whiteout::AUFS_LINK_DIR) {
                    self.aufs_links = true;
                }
                Ok(None)
            }
            Marker::Meta => {
                if comps.len() >= 1 && comps[0] == whiteout::AUFS_LINK_DIR {
                    self.aufs_links = true;
                    return Ok(None);
                }
                tracing::debug!(entry = name, "skipping aufs metadata entry");
                Ok(Some(Ok(())))
            }
            Marker::Whiteout(target) => {
                if !whiteout::valid_target(target) {
                    return Err(LayerError::unsafe_entry(name, "whiteout of `.` or `..`"));
                }
                let mut victim = parent.to_vec();
                victim.push(target.to_os_string());
                match self.format {
                    WhiteoutFormat::Apply => {
                        if self.unpacked.contains(&victim) {
                            // Whiteouts hide lower layers only, never entries
                            // of the same tar.
                            return Ok(Some(Ok(())));
                        }
                        if let Some(dir) = self.parent_dir(parent, name, false)? {
                            safepath::remove_all_at(dir.as_fd(), target)
                                .ctx(|| format!("applying whiteout {name:?}"))?;
                        }
                    }
                    WhiteoutFormat::Overlay => {
                        let dir = self.parent_dir(parent, name, true)?.ok_or_else(|| {
                            LayerError::bad_entry(name, "parent directory missing")
                        })?;
                        safepath::remove_all_at(dir.as_fd(), target)
                            .ctx(|| format!("applying whiteout {name:?}"))?;
                        nix::sys::stat::mknodat(
                            dir.as_fd(),
                            target,
                            SFlag::S_IFCHR,
                            Mode::empty(),
                            0,
                        )
                        .ctx(|| format!("creating the overlay whiteout for {name:?}"))?;
                        if self.privileges.keep_owner {
                            At {
                                dir: dir.as_fd(),
                                name: target,
                            }
                            .chown(attrs.uid, attrs.gid)
                            .ctx(|| format!("changing owner of whiteout {name:?}"))?;
                        }
                    }
                    WhiteoutFormat::Aufs => {}
                }
                Ok(Some(Ok(())))
            }
            Marker::Opaque => {
                match self.format {
                    WhiteoutFormat::Apply => {
                        if let Some(dir) = self.parent_dir(parent, name, false)? {
                            safepath::clear_except(dir.as_fd(), parent, &self.unpacked)
                                .ctx(|| format!("applying opaque marker {name:?}"))?;
                        }
                    }
                    WhiteoutFormat::Overlay => {
                        let dir = self.parent_dir(parent, name, true)?.ok_or_else(|| {
                            LayerError::bad_entry(name, "parent directory missing")
                        })?;
                        let proc = At {
                            dir: dir.as_fd(),
                            name: OsStr::new("."),
                        }
                        .proc_path();
                        xattr::set(&proc, OVERLAY_OPAQUE_XATTR, b"y")
                            .ctx(|| format!("marking {name:?} opaque (trusted.overlay.opaque)"))?;
                    }
                    WhiteoutFormat::Aufs => {}
                }
                Ok(Some(Ok(())))
            }
        }
    }

    fn parent_dir(
        &self,
        parent: &[OsString],
        name: &str,
        create: bool,
    ) -> Result<Option<OwnedFd>, LayerError> {
        self.root.dir(parent, create).map_err(|r| match r {
            Refusal::Io(p, e) => {
                LayerError::io(format!("entry {name:?}: opening directory {p:?}"), e)
            }
            other => LayerError::unsafe_entry(name, other.describe()),
        })
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        name: &str,
        dir: BorrowedFd<'_>,
        last: &OsStr,
    ) -> Result<(), LayerError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| LayerError::bad_entry(name, "hardlink without a target"))?
            .into_owned();
        let tcomps = safepath::components(&target).map_err(|reason| {
            LayerError::unsafe_entry(name, format!("hardlink target: {reason}"))
        })?;
        let Some((tlast, tparent)) = tcomps.split_last() else {
            return Err(LayerError::unsafe_entry(name, "hardlink to the layer root"));
        };
        let tdir = self
            .root
            .dir(tparent, false)
            .map_err(|r| match r {
                Refusal::Io(p, e) => {
                    LayerError::io(format!("entry {name:?}: opening directory {p:?}"), e)
                }
                other => {
                    LayerError::unsafe_entry(name, format!("hardlink target: {}", other.describe()))
                }
            })?
            .ok_or_else(|| missing_target(name, &target))?;
        let tat = At {
            dir: tdir.as_fd(),
            name: tlast,
        };
        match tat
            .stat()
            .ctx(|| format!("inspecting hardlink target of {name:?}"))?
        {
            None => return Err(missing_target(name, &target)),
            Some(st) if is_dir_mode(st.st_mode) => {
                return Err(LayerError::unsafe_entry(name, "hardlink to a directory"));
            }
            Some(_) => {}
        }
        nix::unistd::linkat(tdir.as_fd(), tlast.as_os_str(), dir, last, AtFlags::empty())
            .ctx(|| format!("creating hardlink {name:?}"))
    }

    /// Reads mode, owner, mtime and xattrs (PAX) of an entry.
    fn attrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Attrs, LayerError> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| {
            LayerError::bad_entry(name, format!("unreadable {what}: {e}"))
        };
        // Blank numeric fields read as 0, as Go's archive/tar (Docker) reads them.
        let old = h.as_old();
        let mode = lenient(h.mode().map(u64::from), &old.mode).map_err(|e| bad("mode", e))? as u32
            & 0o7777;
        let uid = lenient(h.uid(), &old.uid).map_err(|e| bad("uid", e))?;
        let gid = lenient(h.gid(), &old.gid).map_err(|e| bad("gid", e))?;
        let mtime = lenient(h.mtime(), &old.mtime).map_err(|e| bad("mtime", e))?;
        let mut attrs = Attrs {
            mode,
            uid: u32::try_from(uid)
                .map_err(|_| LayerError::bad_entry(name, format!("uid {uid} out of range")))?,
            gid: u32::try_from(gid)
                .map_err(|_| LayerError::bad_entry(name, format!("gid {gid} out of range")))?,
            mtime: Timestamp {
                sec: i64::try_from(mtime).unwrap_or(i64::MAX),
                nsec: 0,
            },
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX record", e))?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    let value = ext
                        .value()
                        .map_err(|_| LayerError::bad_entry(name, "PAX mtime is not text"))?;
                    attrs.mtime = Timestamp::parse_pax(value).ok_or_else(|| {
                        LayerError::bad_entry(name, format!("bad PAX mtime {value:?}"))
                    })?;
                } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if x.starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
                        return Err(LayerError::unsafe_entry(
                            name,
                            format!(
                                "it carries overlay's internal xattr {}; layers may not set trusted.overlay.*",
                                String::from_utf8_lossy(x)
                            ),
                        ));
                    }
                    if x.is_empty() || x.contains(&0) {
                        return Err(LayerError::bad_entry(name, "malformed xattr name"));
                    }
                    attrs.xattrs.push((
                        OsStr::from_bytes(x).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
        if !self.privileges.keep_owner {
            attrs.mode &= !0o6000;
        }
        Ok(attrs)
    }

    /// Owner, mode, xattrs and (except for directories, set at the end) times.
    fn set_attrs(
        &self,
        at: At<'_>,
        attrs: &Attrs,
        name: &str,
        comps: &[OsString],
        chmod: bool,
    ) -> Result<(), LayerError> {
        if self.privileges.keep_owner {
            at.chown(attrs.uid, attrs.gid)
                .ctx(|| format!("changing owner of {name:?}"))?;
        }
        if chmod {
            // After chown: chown clears setuid/setgid.
            at.chmod(attrs.mode)
                .ctx(|| format!("changing mode of {name:?}"))?;
        }
        for (key, value) in &attrs.xattrs {
            if let Err(e) = at.set_xattr(key, value) {
                if xattr_ignorable(&e) {
                    tracing::warn!(entry = name, xattr = %key.to_string_lossy(), error = %e,
                        "xattr not supported here; skipped");
                    continue;
                }
                return Err(LayerError::io(
                    format!("setting xattr {} on {name:?}", key.to_string_lossy()),
                    e,
                ));
            }
        }
        let st = at.stat().ctx(|| format!("inspecting {name:?}"))?;
        if st.is_some_and(|st| is_dir_mode(st.st_mode)) {
            // Directory times are set last: creating children changes them.
            self.dir_times
                .borrow_mut()
                .push((comps.to_vec(), attrs.mtime));
        } else {
            at.set_times(attrs.mtime, attrs.mtime)
                .ctx(|| format!("setting times of {name:?}"))?;
        }
        Ok(())
    }

    fn finish(self) -> Result<u64, LayerError> {
        if self.aufs_links {
            safepath::remove_all_at(self.root.fd(), OsStr::new(whiteout::AUFS_LINK_DIR))
                .ctx(|| "removing the extracted aufs hardlink directory".to_string())?;
        }
        // Every entry exists by now, so no later creation changes these.
        for (comps, mtime) in self.dir_times.take() {
            let (dir, last) = match comps.split_last() {
                None => (None, OsStr::new(".")),
                Some((last, parent)) => match self.root.dir(parent, false) {
                    Ok(Some(dir)) => (Some(dir), last.as_os_str()),
                    // Removed by a later whiteout: nothing to date.
                    _ => continue,
                },
            };
            let fd = dir.as_ref().map(|d| d.as_fd()).unwrap_or(self.root.fd());
            At {
                dir: fd,
                name: last,
            }
            .set_times(mtime, mtime)
            .ctx(|| format!("setting times of {:?}", safepath::display(&comps)))?;
        }
        Ok(self.applied)
    }
}

/// A numeric header field, with a blank (all NUL or space) field read as 0.
fn lenient(value: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match value {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        other => other,
    }
}

fn xattr_ignorable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
}

fn missing_target(name: &str, target: &[u8]) -> LayerError {
    LayerError::unsafe_entry(
        name,
        format!(
            "hardlink target {:?} is not in the layer",
            String::from_utf8_lossy(target)
        ),
    )
}

/// Copies `size` bytes from `src` into `file`, leaving aligned zero blocks
/// as holes, then sets the length (trailing holes included).
fn write_sparse(src: &mut dyn Read, file: &File, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let mut src = src.take(size);
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
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            file.write_all_at(block, offset + (i * HOLE_BLOCK) as u64)?;
        }
        offset += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    if offset != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the tar stream ended after {offset} of {size} bytes of this entry"),
        ));
    }
    file.set_len(size)?;
    Ok(())
}
