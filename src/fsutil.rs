//! Crash-safe file primitives shared by every on-disk store.
//!
//! A metadata file is either its old contents or its new contents after a
//! crash, never a mix: write a dot-prefixed temp file in the same directory,
//! fsync it, rename it over the target, then fsync the directory so the
//! rename itself is durable. Loaders skip dot-files, so a temp file left by
//! a crash is never mistaken for data.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Prefix of temp files; loaders ignore names starting with a dot.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Atomically replaces `path` with `contents` (mode `mode`), durable on return.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    DurableDir::open(&dir)?.write(name, contents, mode)
}

/// Removes `path` and makes the removal durable. A missing file is not an error.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(&parent_dir(path)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fsyncs a directory so entries created, renamed or removed in it persist.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) with `mode` if missing; existing dirs are kept as they are.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A directory held open for repeated crash-safe writes in it.
///
/// The same protocol as [`atomic_write`], but relative to one open
/// descriptor: no path walk per call, no random temp name and no open of
/// the directory for its fsync. A snapshot create or delete writes two
/// files through it, and in the test VM those saved system calls are a
/// measurable share of the operation. Entries cannot be created in a
/// directory that was deleted, so a store whose directory vanished fails
/// loudly instead of writing into nowhere.
#[derive(Debug, Clone)]
pub struct DurableDir {
    path: PathBuf,
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl DurableDir {
    pub fn open(path: &Path) -> io::Result<DurableDir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(DurableDir {
            path: path.to_path_buf(),
            fd: std::sync::Arc::new(fd),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces entry `name` with `contents`, durable on return.
    pub fn write(&self, name: impl AsRef<OsStr>, contents: &[u8], mode: u32) -> io::Result<()> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = name.as_ref();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = OsString::from(TEMP_PREFIX);
        tmp.push(name);
        tmp.push(format!("-{}-{n}", std::process::id()));
        let tmp = tmp.as_os_str();
        let result = (|| {
            let fd = nix::fcntl::openat(
                self.fd.as_fd(),
                tmp,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            )
            .map_err(io::Error::from)?;
            let mut file = File::from(fd);
            file.write_all(contents)?;
            file.sync_all()?;
            drop(file);
            nix::fcntl::renameat(self.fd.as_fd(), tmp, self.fd.as_fd(), name)
                .map_err(io::Error::from)?;
            self.sync()
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(
                self.fd.as_fd(),
                tmp,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        result
    }

    /// Removes entry `name` durably; a missing entry is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => self.sync(),
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes entries created, renamed or removed so far durable.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(self.fd.as_fd()).map_err(io::Error::from)
    }
}

/// Lists temp files a crash left in `dir` (for `fsck` and start-up cleanup).
pub fn stray_temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn parent_dir(path: &Path) -> io::Result<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.to_path_buf()),
        Some(_) => Ok(PathBuf::from(".")),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent directory", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("base");
        atomic_write(&target, b"one", 0o600).unwrap();
        atomic_write(&target, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(stray_temp_files(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn atomic_write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("nope").join("base");
        assert!(atomic_write(&target, b"x", 0o600).is_err());
    }

    #[test]
    fn remove_durable_ignores_missing() {
        let dir = tempfile::tempdir().unwrap();
        remove_durable(&dir.path().join("absent")).unwrap();
    }

    #[test]
    fn finds_stray_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-base-123"), b"half").unwrap();
        fs::write(dir.path().join("base"), b"{}").unwrap();
        let strays = stray_temp_files(dir.path()).unwrap();
        assert_eq!(strays.len(), 1);
    }

    #[test]
    fn durable_dir_writes_replaces_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let d = DurableDir::open(dir.path()).unwrap();
        d.write("base", b"one", 0o600).unwrap();
        d.write("base", b"two", 0o600).unwrap();
        assert_eq!(fs::read(dir.path().join("base")).unwrap(), b"two");
        assert_eq!(
            fs::metadata(dir.path().join("base"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(stray_temp_files(dir.path()).unwrap().is_empty());
        d.remove("base").unwrap();
        d.remove("base").unwrap();
        assert!(!dir.path().join("base").exists());
    }

    #[test]
    fn durable_dir_refuses_a_deleted_directory() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("meta");
        fs::create_dir(&path).unwrap();
        let d = DurableDir::open(&path).unwrap();
        fs::remove_dir(&path).unwrap();
        assert!(d.write("base", b"x", 0o600).is_err());
    }
}
