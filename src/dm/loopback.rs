//! Loop devices backing loopback pools: sparse files, attach with
//! autoclear (the loop goes away when the pool releases it), and finding
//! the loop device already attached to a file after a restart.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use loopdev::{LoopControl, LoopDevice};

use super::control::DevNo;
use super::error::{DmError, DmResult};
use crate::units::Bytes;

/// A loop device attached to a backing file.
///
/// A loop attached with autoclear detaches as soon as its last opener
/// closes it, so a freshly attached loop keeps its own handle open until
/// the pool table takes a reference (keep the `Loop` alive until then).
#[derive(Clone)]
pub struct Loop {
    pub path: PathBuf,
    pub devno: DevNo,
    _hold: Option<std::sync::Arc<LoopDevice>>,
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("path", &self.path)
            .field("devno", &self.devno)
            .finish()
    }
}

impl PartialEq for Loop {
    fn eq(&self, other: &Loop) -> bool {
        self.path == other.path && self.devno == other.devno
    }
}

/// Creates `file` sparse at `size`, or grows it to `size`; never shrinks.
/// Returns true when the file was created.
pub fn ensure_sparse_file(file: &Path, size: Bytes) -> DmResult<bool> {
    let created = !file.exists();
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| DmError::io("opening loop file", file, e))?;
    let len = f
        .metadata()
        .map_err(|e| DmError::io("inspecting", file, e))?
        .len();
    if len < size.0 {
        f.set_len(size.0)
            .map_err(|e| DmError::io("growing loop file", file, e))?;
    } else if len > size.0 && !created {
        tracing::warn!(file = %file.display(), current = len, requested = size.0,
            "loop file is larger than requested; it is never shrunk");
    }
    Ok(created)
}

/// The loop device currently backed by `file` (same device and inode), if any.
pub fn find_attached(file: &Path) -> DmResult<Option<Loop>> {
    let want = fs::metadata(file).map_err(|e| DmError::io("inspecting", file, e))?;
    let entries =
        fs::read_dir("/sys/block").map_err(|e| DmError::io("listing", "/sys/block", e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let sys = e.path().join("loop");
        let (Ok(dev), Ok(ino)) = (
            fs::read_to_string(sys.join("backing_dev")).or_else(|_| backing_dev_from_file(&sys)),
            fs::read_to_string(sys.join("backing_inode")).or_else(|_| backing_ino_from_file(&sys)),
        ) else {
            continue;
        };
        if dev.trim().parse::<u64>().ok() == Some(want.dev())
            && ino.trim().parse::<u64>().ok() == Some(want.ino())
        {
            return Ok(Some(loop_from_sys(&name)?));
        }
    }
    Ok(None)
}

/// Where loop device `devno` reads from now (`/sys/dev/block/M:m/loop/
/// backing_file`, which says `(deleted)` after an unlink), with its node.
pub fn backing_of(devno: DevNo) -> Option<(PathBuf, String)> {
    let sys = PathBuf::from(format!("/sys/dev/block/{devno}"));
    let backing = fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    let name = fs::read_link(&sys)
        .ok()?
        .file_name()?
        .to_string_lossy()
        .into_owned();
    Some((PathBuf::from("/dev").join(name), backing.trim().to_string()))
}

/// Older kernels lack backing_dev/backing_inode: fall back to comparing the
/// backing file path.
fn backing_dev_from_file(sys: &Path) -> std::io::Result<String> {
    let p = fs::read_to_string(sys.join("backing_file"))?;
    fs::metadata(p.trim()).map(|m| m.dev().to_string())
}

fn backing_ino_from_file(sys: &Path) -> std::io::Result<String> {
    let p = fs::read_to_string(sys.join("backing_file"))?;
    fs::metadata(p.trim()).map(|m| m.ino().to_string())
}

fn loop_from_sys(name: &str) -> DmResult<Loop> {
    let dev_path = format!("/sys/block/{name}/dev");
    let text = fs::read_to_string(&dev_path).map_err(|e| DmError::io("reading", &dev_path, e))?;
    let devno = DevNo::parse(text.trim()).ok_or_else(|| DmError::Parse {
        what: "device number",
        device: name.to_string(),
        line: text.clone(),
    })?;
    Ok(Loop {
        path: PathBuf::from(format!("/dev/{name}")),
        devno,
        _hold: None,
    })
}

/// Attaches `file` to a free loop device with autoclear, retrying when
/// another process takes the device first.
pub fn attach(file: &Path) -> DmResult<Loop> {
    let lc = LoopControl::open().map_err(|e| DmError::io("opening", "/dev/loop-control", e))?;
    let mut last = None;
    for _ in 0..16 {
        let ld: LoopDevice = lc
            .next_free()
            .map_err(|e| DmError::io("finding a free loop device for", file, e))?;
        match ld.with().autoclear(true).attach(file) {
            Ok(()) => {
                let path = ld.path().ok_or_else(|| {
                    DmError::io(
                        "naming loop device for",
                        file,
                        std::io::Error::other("no path"),
                    )
                })?;
                let devno = DevNo {
                    major: ld
                        .major()
                        .map_err(|e| DmError::io("reading major of", &path, e))?,
                    minor: ld
                        .minor()
                        .map_err(|e| DmError::io("reading minor of", &path, e))?,
                };
                return Ok(Loop {
                    path,
                    devno,
                    _hold: Some(std::sync::Arc::new(ld)),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(DmError::io("attaching loop device to", file, e)),
        }
    }
    Err(DmError::io(
        "attaching loop device to",
        file,
        last.unwrap_or_else(|| std::io::Error::other("no free loop device")),
    ))
}

/// Reuses the loop already backing `file` or attaches a new one.
pub fn attach_or_find(file: &Path) -> DmResult<Loop> {
    match find_attached(file)? {
        Some(l) => Ok(l),
        None => attach(file),
    }
}

/// Tells the loop driver its backing file grew (LOOP_SET_CAPACITY).
pub fn refresh_capacity(l: &Loop) -> DmResult<()> {
    let ld = LoopDevice::open(&l.path).map_err(|e| DmError::io("opening", &l.path, e))?;
    ld.set_capacity()
        .map_err(|e| DmError::io("setting capacity of", &l.path, e))
}

/// Size of the loop device as the kernel sees it.
pub fn size(l: &Loop) -> DmResult<Bytes> {
    super::block::size(&l.path)
}
