//! One service per store root: `<root>/service/serve.lock`, held with an
//! exclusive `flock` for the service's lifetime. Its contents (JSON: pid,
//! socket, driver) tell the CLI where to send read requests while the
//! service owns the store. The kernel drops the lock when the process dies,
//! so a kill -9 never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Directory under the store root where the service keeps its own files.
pub const SERVICE_DIR: &str = "service";
const LOCK_FILE: &str = "serve.lock";

/// What a running service says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub pid: u32,
    pub socket: PathBuf,
    pub driver: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another thinsnap serve (pid {}, socket {}) already serves the store at {}; stop it first",
        .holder.as_ref().map(|h| h.pid.to_string()).unwrap_or_else(|| "unknown".into()),
        .holder.as_ref().map(|h| h.socket.display().to_string()).unwrap_or_else(|| "unknown".into()),
        .root.display()
    )]
    AlreadyServed {
        root: PathBuf,
        holder: Option<InstanceInfo>,
    },
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the lifetime of the service; dropping it releases the root.
pub struct InstanceLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(root: &Path) -> PathBuf {
    root.join(SERVICE_DIR).join(LOCK_FILE)
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the root for this process, or says who holds it.
pub fn acquire(root: &Path, info: &InstanceInfo) -> Result<InstanceLock, InstanceError> {
    let dir = root.join(SERVICE_DIR);
    crate::fsutil::ensure_dir(&dir, 0o700).map_err(io("creating", &dir))?;
    let path = lock_path(root);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, Errno::EWOULDBLOCK)) => {
            return Err(InstanceError::AlreadyServed {
                root: root.to_path_buf(),
                holder: read_info(&path),
            });
        }
        Err((_, e)) => return Err(io("locking", &path)(e.into())),
    };
    let json = serde_json::to_vec(info).unwrap_or_default();
    (|| {
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        lock.write_all(&json)?;
        lock.sync_all()
    })()
    .map_err(io("writing", &path))?;
    Ok(InstanceLock { _lock: lock, path })
}

fn read_info(path: &Path) -> Option<InstanceInfo> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// The service currently holding `root`, if any (the CLI asks before
/// touching a store).
pub fn running(root: &Path) -> Option<InstanceInfo> {
    let path = lock_path(root);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((_, Errno::EWOULDBLOCK)) => Some(read_info(&path).unwrap_or(InstanceInfo {
            pid: 0,
            socket: PathBuf::new(),
            driver: String::new(),
        })),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_instance_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let info = InstanceInfo {
            pid: 4242,
            socket: "/run/x.sock".into(),
            driver: "vfs".into(),
        };
        assert_eq!(running(dir.path()), None);
        let lock = acquire(dir.path(), &info).unwrap();
        // flock locks belong to the open file description: a second open
        // in the same process conflicts just like another process would.
        let e = acquire(dir.path(), &info).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("pid 4242") && msg.contains("/run/x.sock"),
            "{msg}"
        );
        assert_eq!(running(dir.path()), Some(info.clone()));
        drop(lock);
        assert_eq!(running(dir.path()), None);
        let _again = acquire(dir.path(), &info).unwrap();
    }
}
