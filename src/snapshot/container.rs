//! Container layers as Docker builds them: a `<id>-init` layer on the
//! image's top layer holding the files the runtime bind-mounts over, then
//! the container's writable `<id>` layer on top of the init layer.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use super::naive::Mounted;
use super::{CreateOpts, Driver, IoContext, LayerId, Result, SnapshotError};

/// What the init layer must contain, as Docker's `initlayer.Setup` makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitEntry {
    Dir,
    File,
    Symlink(&'static str),
}

/// The init layer's entries, in the order they are created.
pub const INIT_LAYER: &[(&str, InitEntry)] = &[
    ("/dev/pts", InitEntry::Dir),
    ("/dev/shm", InitEntry::Dir),
    ("/proc", InitEntry::Dir),
    ("/sys", InitEntry::Dir),
    ("/.dockerenv", InitEntry::File),
    ("/etc/resolv.conf", InitEntry::File),
    ("/etc/hosts", InitEntry::File),
    ("/etc/hostname", InitEntry::File),
    ("/dev/console", InitEntry::File),
    ("/etc/mtab", InitEntry::Symlink("/proc/mounts")),
];

/// Creates container `id` on image layer `image_top`: `<id>-init`
/// (populated) then `<id>`. On failure nothing is left behind.
pub fn create_container<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    image_top: Option<&LayerId>,
    opts: &CreateOpts,
) -> Result<()> {
    let init = id.init_layer()?;
    if driver.exists(id) {
        return Err(SnapshotError::already_exists(id));
    }
    if driver.exists(&init) {
        // An init layer without its container is what an interrupted
        // create_container leaves behind (the container layer is created
        // last): start over rather than fail forever.
        tracing::warn!(id = %init, "removing the init layer of an interrupted container create");
        driver.remove(&init)?;
    }
    driver.create_read_write(&init, image_top, opts)?;
    let populated = (|| {
        let mounted = Mounted::new(driver, &init)?;
        populate_init_layer(&mounted.path, Some((0, 0)))?;
        crate::layer::sync_tree(&mounted.path)
    })();
    if let Err(e) = populated {
        undo_create(driver, &init);
        return Err(e);
    }
    if let Err(e) = driver.create_read_write(id, Some(&init), opts) {
        undo_create(driver, &init);
        return Err(e);
    }
    Ok(())
}

/// Removes container `id`: `<id>` first, then `<id>-init`. A missing init
/// layer is not an error (half-created containers must be removable).
pub fn remove_container<D: Driver + ?Sized>(driver: &D, id: &LayerId) -> Result<()> {
    let init = id.init_layer()?;
    let had_container = driver.exists(id);
    if had_container {
        driver.remove(id)?;
    }
    if driver.exists(&init) {
        driver.remove(&init)?;
    } else if !had_container {
        return Err(SnapshotError::not_found(id));
    }
    Ok(())
}

fn undo_create<D: Driver + ?Sized>(driver: &D, id: &LayerId) {
    if let Err(e) = driver.remove(id) {
        tracing::error!(id = %id, error = %e, "could not remove half-created init layer");
    }
}

/// Writes the init entries under `root`, replacing whatever non-directory
/// is in the way (a symlink `/etc -> /somewhere` is removed, never followed).
/// `owner` is applied to every created entry (`Some((0, 0))` for root).
pub fn populate_init_layer(root: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    for (path, entry) in INIT_LAYER {
        let rel = Path::new(path.trim_start_matches('/'));
        let mut current = root.to_path_buf();
        let components: Vec<_> = rel.components().collect();
        for (i, comp) in components.iter().enumerate() {
            let Component::Normal(name) = comp else {
                return Err(SnapshotError::invalid(format!("bad init path {path}")));
            };
            current.push(name);
            let last = i + 1 == components.len();
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() && !meta.file_type().is_symlink() => {
                    if last && *entry != InitEntry::Dir {
                        // A directory where a file or link belongs: leave the
                        // image's directory alone, as Docker does.
                        break;
                    }
                    continue;
                }
                Ok(_) => fs::remove_file(&current).ctx("removing", &current)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io_path("inspecting", &current, e)),
            }
            if !last {
                make_dir(&current, owner)?;
                continue;
            }
            match entry {
                InitEntry::Dir => make_dir(&current, owner)?,
                InitEntry::File => {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o755)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&current)
                        .ctx("creating", &current)?;
                    fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                        .ctx("setting mode of", &current)?;
                    chown(&current, owner)?;
                }
                InitEntry::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &current)
                        .ctx("creating symlink", &current)?;
                    chown(&current, owner)?;
                }
            }
        }
    }
    Ok(())
}

fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .ctx("creating directory", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).ctx("setting mode of", path)?;
    chown(path, owner)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).ctx("changing owner of", path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn me() -> Option<(u32, u32)> {
        Some((
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ))
    }

    #[test]
    fn populates_exact_init_contents() {
        let dir = tempfile::tempdir().unwrap();
        populate_init_layer(dir.path(), me()).unwrap();
        for (path, entry) in INIT_LAYER {
            let p = dir.path().join(path.trim_start_matches('/'));
            let meta = fs::symlink_metadata(&p).unwrap();
            match entry {
                InitEntry::Dir => assert!(meta.is_dir(), "{path}"),
                InitEntry::File => {
                    assert!(meta.is_file(), "{path}");
                    assert_eq!(meta.len(), 0);
                    assert_eq!(meta.mode() & 0o7777, 0o755, "{path}");
                }
                InitEntry::Symlink(t) => {
                    assert_eq!(fs::read_link(&p).unwrap(), Path::new(t));
                }
            }
        }
        let mut top: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, [".dockerenv", "dev", "etc", "proc", "sys"]);
    }

    #[test]
    fn replaces_what_is_in_the_way_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // /etc is a symlink to a directory outside the layer: it must be
        // replaced, and nothing may be written outside.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc")).unwrap();
        fs::create_dir(dir.path().join("dev")).unwrap();
        fs::write(dir.path().join("dev/console"), b"old").unwrap();
        populate_init_layer(dir.path(), me()).unwrap();
        assert!(
            fs::symlink_metadata(dir.path().join("etc"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(fs::read(dir.path().join("dev/console")).unwrap(), b"");
        assert_eq!(
            fs::read_link(dir.path().join("etc/mtab")).unwrap(),
            Path::new("/proc/mounts")
        );
    }
}
