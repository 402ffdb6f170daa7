//! The three btrfs ioctls the backend needs, with the kernel's argument
//! structs (`include/uapi/linux/btrfs.h`) declared here: create a
//! subvolume, snapshot one, destroy one. All take the directory that holds
//! (or will hold) the subvolume and the subvolume's name in it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX`: the name field of `btrfs_ioctl_vol_args` is one more.
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`: the name field of `btrfs_ioctl_vol_args_v2` is one more.
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the snapshot is read-only.
pub const SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume root.
pub const SUBVOLUME_ROOT_INO: u64 = 256;
/// `BTRFS_SUPER_MAGIC` as `statfs` reports it.
pub const BTRFS_MAGIC: i64 = 0x9123_683E;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
pub struct VolArgs {
    pub fd: i64,
    pub name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the size/qgroup union is unused here).
#[repr(C)]
pub struct VolArgsV2 {
    pub fd: i64,
    pub transid: u64,
    pub flags: u64,
    pub unused: [u64; 4],
    pub name: [u8; SUBVOL_NAME_MAX + 1],
}

nix::ioctl_write_ptr!(btrfs_subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(btrfs_snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(btrfs_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);

/// Copies `name` into a NUL-terminated field, refusing names that are
/// empty, too long, or contain `/` or NUL.
fn fill_name(field: &mut [u8], name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= field.len() || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} cannot name a btrfs subvolume"),
        ));
    }
    field[..b.len()].copy_from_slice(b);
    field[b.len()] = 0;
    Ok(())
}

fn open_dir(dir: &Path) -> io::Result<File> {
    File::open(dir)
}

/// Creates an empty subvolume `name` in directory `dir`.
pub fn create_subvolume(dir: &Path, name: &OsStr) -> io::Result<()> {
    let d = open_dir(dir)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args that
    // outlives the call; `d` is an open directory.
    unsafe { btrfs_subvol_create(d.as_raw_fd(), &*args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Snapshots subvolume `source` as `name` in directory `dir`.
pub fn snapshot(source: &Path, dir: &Path, name: &OsStr, readonly: bool) -> io::Result<()> {
    let src = open_dir(source)?;
    let d = open_dir(dir)?;
    let mut args = Box::new(VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: as above; `src` stays open for the duration of the call.
    unsafe { btrfs_snap_create_v2(d.as_raw_fd(), &*args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Destroys subvolume `name` in directory `dir` (it must hold no other
/// subvolumes).
pub fn destroy_subvolume(dir: &Path, name: &OsStr) -> io::Result<()> {
    let d = open_dir(dir)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: as above.
    unsafe { btrfs_snap_destroy(d.as_raw_fd(), &*args) }.map_err(io::Error::from)?;
    Ok(())
}

/// True when `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    let md = std::fs::symlink_metadata(path)?;
    if !md.is_dir() || md.ino() != SUBVOLUME_ROOT_INO {
        return Ok(false);
    }
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 == BTRFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernels_size() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        // _IOW(0x94, 14, 4096-byte struct) as in linux/btrfs.h.
        assert_eq!(
            nix::request_code_write!(BTRFS_IOCTL_MAGIC, 14, std::mem::size_of::<VolArgs>()),
            0x5000_940E
        );
        assert_eq!(
            nix::request_code_write!(BTRFS_IOCTL_MAGIC, 23, std::mem::size_of::<VolArgsV2>()),
            0x5000_9417
        );
    }

    #[test]
    fn names_are_checked() {
        let mut field = [0xffu8; 8];
        fill_name(&mut field, OsStr::new("abc")).unwrap();
        assert_eq!(&field[..4], b"abc\0");
        for bad in ["", "a/b", "12345678"] {
            assert!(fill_name(&mut field, OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_subvolume(dir.path()).unwrap());
    }
}
