//! The listening socket: created mode 0600 with no window in which anyone
//! else could connect (bound under a temporary name, chmod'ed, renamed into
//! place), and a stale socket from a killed service replaced only after a
//! connect attempt proves nobody answers on it.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{} is in use: another server answers on it", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds `path` (mode 0600, parent directory created 0711).
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::fsutil::ensure_dir(&dir, 0o711).map_err(io_err("creating", &dir))?;
    remove_stale(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "thinsnap.sock".into());
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err("binding", &tmp))?;
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting the mode of", &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("renaming into", path)));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Removes a socket nobody answers on; refuses live sockets and non-sockets.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale socket");
            fs::remove_file(path).map_err(io_err("removing stale", path))
        }
        Err(e) => Err(io_err("probing", path)(e)),
    }
}

/// Removes the socket at shutdown (only if it is still ours: a socket).
pub fn unlink(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && let Err(e) = fs::remove_file(path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_stale_live_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/thinsnap.sock");
        let live = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path), Err(SocketError::InUse(_))));
        // A dead server leaves its socket file behind: it gets replaced.
        drop(live);
        assert!(path.exists());
        let again = bind(&path).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(again);
        unlink(&path);
        assert!(!path.exists());
        // A regular file in the way is never deleted.
        fs::write(&path, b"precious").unwrap();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket(_))));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        // No temp names left in the directory.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
