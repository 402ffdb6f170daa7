//! OCI layer tars out: from a full tree plus a change list (naive diff), or
//! from a union layer directory whose native whiteouts are translated.
//!
//! Every entry keeps mode (with setuid/setgid/sticky), uid/gid, mtime (PAX
//! `mtime` with nanoseconds when they are not zero), xattrs (PAX
//! `SCHILY.xattr.*`, overlay's own `trusted.overlay.*` never), symlink
//! targets, device numbers and fifos; the second path of a hardlinked file
//! becomes a tar hardlink to the first. Sockets are skipped, as Docker
//! does. Sparse files are written as regular entries (OCI: sparse entries
//! SHOULD NOT be used); the applier punches the holes back.
//!
//! Whiteouts are empty regular files `.wh.<name>` (mode 0600, owner 0:0,
//! mtime 0, so diffs of the same tree are byte-identical); an opaque
//! directory is its own entry followed by `<dir>/.wh..wh..opq` carrying the
//! directory's mode, owner and mtime.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use tar::{EntryType, Header};

use super::WhiteoutFormat;
use super::changes;
use super::error::{IoCtx, LayerError};
use super::fsmeta::{self, FileKind, Meta};
use super::whiteout::{self, Marker, OVERLAY_OPAQUE_XATTR};
use crate::snapshot::{Change, ChangeKind};

/// Counts what goes through to the output.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A tar being written: remembers emitted paths and hardlinked inodes.
struct TarOut<'a> {
    builder: tar::Builder<Counting<'a>>,
    emitted: HashSet<PathBuf>,
    links: HashMap<(u64, u64), PathBuf>,
}

fn write_err(what: &Path, e: io::Error) -> LayerError {
    LayerError::io(format!("writing tar entry for {}", what.display()), e)
}

impl<'a> TarOut<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        TarOut {
            builder: tar::Builder::new(Counting {
                inner: out,
                written: 0,
            }),
            emitted: HashSet::new(),
            links: HashMap::new(),
        }
    }

    fn finish(self) -> Result<u64, LayerError> {
        let counting = self
            .builder
            .into_inner()
            .map_err(|e| LayerError::io("finishing the tar stream", e))?;
        Ok(counting.written)
    }

    /// Emits `rel` (relative, no leading `/`) from `abs` with metadata `m`.
    fn entry(&mut self, abs: &Path, rel: &Path, m: &Meta) -> Result<(), LayerError> {
        if !self.emitted.insert(rel.to_path_buf()) {
            return Ok(());
        }
        let mut h = Header::new_gnu();
        h.set_mode(m.mode);
        h.set_uid(u64::from(m.uid));
        h.set_gid(u64::from(m.gid));
        h.set_mtime(m.mtime.sec.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if m.mtime.nsec != 0 || m.mtime.sec < 0 {
            pax.push(("mtime".into(), m.mtime.pax().into_bytes()));
        }
        for (name, value) in &m.xattrs {
            let mut key = String::from("SCHILY.xattr.");
            key.push_str(&name.to_string_lossy());
            pax.push((key, value.clone()));
        }
        let write_pax = |b: &mut tar::Builder<Counting<'a>>| -> Result<(), LayerError> {
            if pax.is_empty() {
                return Ok(());
            }
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| write_err(rel, e))
        };
        match m.kind {
            FileKind::Socket => {
                tracing::debug!(path = %rel.display(), "skipping socket");
                Ok(())
            }
            FileKind::Dir => {
                h.set_entry_type(EntryType::Directory);
                write_pax(&mut self.builder)?;
                let mut name = rel.as_os_str().to_os_string();
                name.push("/");
                self.builder
                    .append_data(&mut h, Path::new(&name), io::empty())
                    .map_err(|e| write_err(rel, e))
            }
            FileKind::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                write_pax(&mut self.builder)?;
                let target = m.link_target.clone().unwrap_or_default();
                self.builder
                    .append_link(&mut h, rel, Path::new(&target))
                    .map_err(|e| write_err(rel, e))
            }
            FileKind::Regular => {
                if m.nlink > 1 {
                    if let Some(first) = self.links.get(&(m.dev, m.ino)).cloned() {
                        h.set_entry_type(EntryType::Link);
                        write_pax(&mut self.builder)?;
                        return self
                            .builder
                            .append_link(&mut h, rel, &first)
                            .map_err(|e| write_err(rel, e));
                    }
                    self.links.insert((m.dev, m.ino), rel.to_path_buf());
                }
                h.set_entry_type(EntryType::Regular);
                h.set_size(m.size);
                write_pax(&mut self.builder)?;
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(abs)
                    .ctx(|| format!("opening {}", abs.display()))?;
                let mut data = ExactLen {
                    inner: file.take(m.size),
                    left: m.size,
                    path: abs,
                };
                self.builder
                    .append_data(&mut h, rel, &mut data)
                    .map_err(|e| write_err(rel, e))
            }
            FileKind::Char | FileKind::Block | FileKind::Fifo => {
                h.set_entry_type(match m.kind {
                    FileKind::Char => EntryType::Char,
                    FileKind::Block => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                if m.kind != FileKind::Fifo {
                    let (major, minor) = m.major_minor();
                    h.set_device_major(major).map_err(|e| write_err(rel, e))?;
                    h.set_device_minor(minor).map_err(|e| write_err(rel, e))?;
                }
                write_pax(&mut self.builder)?;
                self.builder
                    .append_data(&mut h, rel, io::empty())
                    .map_err(|e| write_err(rel, e))
            }
        }
    }

    /// `.wh.<name>` deleting `rel` from the lower layers.
    fn whiteout(&mut self, rel: &Path) -> Result<(), LayerError> {
        let name = rel.file_name().unwrap_or_default();
        let wh = rel.with_file_name(whiteout::whiteout_name(name));
        if !self.emitted.insert(wh.clone()) {
            return Ok(());
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.builder
            .append_data(&mut h, &wh, io::empty())
            .map_err(|e| write_err(&wh, e))
    }

    /// `<dir>/.wh..wh..opq` with the directory's mode, owner and mtime.
    fn opaque(&mut self, dir_rel: &Path, dir: &Meta) -> Result<(), LayerError> {
        let marker = dir_rel.join(whiteout::OPAQUE_MARKER);
        if !self.emitted.insert(marker.clone()) {
            return Ok(());
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(dir.mode);
        h.set_uid(u64::from(dir.uid));
        h.set_gid(u64::from(dir.gid));
        h.set_mtime(dir.mtime.sec.max(0) as u64);
        h.set_size(0);
        self.builder
            .append_data(&mut h, &marker, io::empty())
            .map_err(|e| write_err(&marker, e))
    }

    /// Emits the directories above `rel` that are not in the tar yet.
    fn parents(&mut self, root: &Path, rel: &Path) -> Result<(), LayerError> {
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for comp in comps.iter().take(comps.len().saturating_sub(1)) {
            prefix.push(comp);
            if !self.emitted.contains(&prefix) {
                let abs = root.join(&prefix);
                let m = fsmeta::read(&abs).ctx(|| format!("inspecting {}", abs.display()))?;
                self.entry(&abs, &prefix.clone(), &m)?;
            }
        }
        Ok(())
    }
}

/// A file's data, exactly `left` bytes: a file that shrank while being read
/// is an error rather than a silently short (corrupt) tar.
struct ExactLen<'p, R> {
    inner: R,
    left: u64,
    path: &'p Path,
}

impl<R: Read> Read for ExactLen<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Layer-relative path (`/etc/x` → `etc/x`).
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Writes an OCI layer tar of `changes` with contents read from `root`.
pub fn write_tar(root: &Path, changes: &[Change], out: &mut dyn Write) -> Result<u64, LayerError> {
    let mut sorted = changes.to_vec();
    changes::sort(&mut sorted);
    let mut tar = TarOut::new(out);
    for (i, change) in sorted.iter().enumerate() {
        let rel = relative(&change.path);
        if rel.as_os_str().is_empty() {
            continue;
        }
        let replaced = |j: usize| {
            sorted
                .get(j)
                .is_some_and(|c| c.path == change.path && c.kind == ChangeKind::Delete)
        };
        match change.kind {
            ChangeKind::Delete => {
                let re_added = sorted.get(i + 1).is_some_and(|c| c.path == change.path);
                if !re_added {
                    tar.parents(root, &rel)?;
                    tar.whiteout(&rel)?;
                }
            }
            ChangeKind::Add | ChangeKind::Modify => {
                tar.parents(root, &rel)?;
                let abs = root.join(&rel);
                let m = fsmeta::read(&abs).ctx(|| format!("inspecting {}", abs.display()))?;
                tar.entry(&abs, &rel, &m)?;
                if i > 0 && replaced(i - 1) && m.kind == FileKind::Dir {
                    tar.opaque(&rel, &m)?;
                }
            }
        }
    }
    tar.finish()
}

/// Writes an OCI layer tar of a union layer directory, translating its
/// native whiteouts (overlay: char 0/0 and `trusted.overlay.opaque=y`;
/// aufs: `.wh.` files, internals `.wh..wh.{plnk,aufs,orph}` skipped).
/// `Apply` exports the directory as a plain tree.
pub fn write_layer_dir_tar(
    dir: &Path,
    format: WhiteoutFormat,
    out: &mut dyn Write,
) -> Result<u64, LayerError> {
    let mut tar = TarOut::new(out);
    walk_layer_dir(&mut tar, dir, Path::new(""), format)?;
    tar.finish()
}

fn walk_layer_dir(
    tar: &mut TarOut<'_>,
    dir: &Path,
    rel: &Path,
    format: WhiteoutFormat,
) -> Result<(), LayerError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .ctx(|| format!("listing {}", dir.display()))?;
    names.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
    for name in names {
        let abs = dir.join(&name);
        let child = rel.join(&name);
        if format == WhiteoutFormat::Aufs {
            match whiteout::classify(&name) {
                Marker::Whiteout(target) if whiteout::valid_target(target) => {
                    tar.whiteout(&rel.join(target))?;
                    continue;
                }
                Marker::Whiteout(_) | Marker::Meta | Marker::Opaque => continue,
                Marker::None => {}
            }
        }
        let m = fsmeta::read(&abs).ctx(|| format!("inspecting {}", abs.display()))?;
        if format == WhiteoutFormat::Overlay && m.kind == FileKind::Char && m.rdev == 0 {
            tar.whiteout(&child)?;
            continue;
        }
        tar.entry(&abs, &child, &m)?;
        if m.kind == FileKind::Dir {
            if is_opaque(&abs, format)? {
                tar.opaque(&child, &m)?;
            }
            walk_layer_dir(tar, &abs, &child, format)?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path, format: WhiteoutFormat) -> Result<bool, LayerError> {
    match format {
        WhiteoutFormat::Overlay => match xattr::get(dir, OVERLAY_OPAQUE_XATTR) {
            Ok(v) => Ok(v.as_deref() == Some(b"y")),
            Err(e) if fsmeta::is_unsupported(&e) => Ok(false),
            Err(e) => Err(LayerError::io(
                format!("reading xattrs of {}", dir.display()),
                e,
            )),
        },
        WhiteoutFormat::Aufs => Ok(fs::symlink_metadata(dir.join(whiteout::OPAQUE_MARKER)).is_ok()),
        WhiteoutFormat::Apply => Ok(false),
    }
}

/// Docker's `ChangesSize`: apparent sizes of the added or modified
/// non-directories, each hardlinked inode counted once.
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64, LayerError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for change in changes {
        if change.kind == ChangeKind::Delete {
            continue;
        }
        let abs = root.join(relative(&change.path));
        let m = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LayerError::io(format!("inspecting {}", abs.display()), e)),
        };
        if m.is_dir() {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total = total.saturating_add(m.len());
    }
    Ok(total)
}

/// True when `name` is a whiteout or aufs metadata name.
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes()
        .starts_with(whiteout::WHITEOUT_PREFIX.as_bytes())
}
