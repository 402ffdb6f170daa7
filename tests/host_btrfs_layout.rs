//! btrfs on a loop filesystem made by the test (host, root): Docker's
//! `btrfs/subvolumes/<id>` layout with real subvolumes, snapshots sharing
//! their parent's data, nested subvolumes removed with their layer, a
//! half-built subvolume from a crash destroyed at open, and the refusal of
//! a root that is not on btrfs.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use thinsnap::backend::btrfs::{BtrfsDriver, ioctl};
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// A btrfs root; the driver is cleaned up before the filesystem goes.
struct Btrfs {
    d: Option<BtrfsDriver>,
    root: PathBuf,
    _fs: common::LoopFs,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Btrfs {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        let lfs = common::LoopFs::new(&["mkfs.btrfs", "-q", "-f"], 512, &root);
        Btrfs {
            d: Some(BtrfsDriver::open(&root, &[]).unwrap()),
            root,
            _fs: lfs,
            _dir: dir,
        }
    }

    fn d(&self) -> &BtrfsDriver {
        self.d.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        self.d = None;
        self.d = Some(BtrfsDriver::open(&self.root, &[]).unwrap());
    }

    fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.root).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    fn sync(&self) {
        nix::unistd::syncfs(fs::File::open(&self.root).unwrap()).unwrap();
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        if let Some(d) = self.d.take() {
            let _ = d.cleanup();
        }
    }
}

#[test]
fn layers_are_subvolumes_and_snapshots_share_data() {
    let s = Btrfs::new();
    let d = s.d();
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    let base = d.get(&id("base"), None).unwrap();
    assert_eq!(base, s.root.join("btrfs/subvolumes/base"));
    assert!(ioctl::is_subvolume(&base).unwrap());
    assert_eq!(fs::metadata(&base).unwrap().mode() & 0o7777, 0o755);
    let mut f = fs::File::create(base.join("big")).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    for _ in 0..64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    d.put(&id("base")).unwrap();
    s.sync();
    let before = s.free_bytes();
    d.create(&id("child"), Some(&id("base")), &CreateOpts::default())
        .unwrap();
    s.sync();
    let used = before.saturating_sub(s.free_bytes());
    assert!(
        used < 16 << 20,
        "a snapshot shares its parent's 64 MiB (used {used} bytes)"
    );
    let child = d.get(&id("child"), None).unwrap();
    assert!(ioctl::is_subvolume(&child).unwrap());
    assert_ne!(
        fs::metadata(&child).unwrap().dev(),
        fs::metadata(&base).unwrap().dev(),
        "each subvolume is its own device"
    );
    assert_eq!(fs::metadata(child.join("big")).unwrap().len(), 64 << 20);
    fs::write(child.join("big"), b"rewritten").unwrap();
    assert_eq!(fs::metadata(base.join("big")).unwrap().len(), 64 << 20);
    d.put(&id("child")).unwrap();
    let mut names: Vec<String> = fs::read_dir(s.root.join("btrfs/subvolumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["base", "child"]);
    assert_eq!(d.parent(&id("child")).unwrap(), Some(id("base")));
    let changes: Vec<String> = d
        .changes(&id("child"), None)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect();
    assert_eq!(changes, ["C /big"]);
}

#[test]
fn nested_subvolumes_go_with_their_layer() {
    let s = Btrfs::new();
    let d = s.d();
    d.create(&id("ctr"), None, &CreateOpts::default()).unwrap();
    let root = d.get(&id("ctr"), None).unwrap();
    // What systemd or docker-in-docker may do inside a container.
    fs::create_dir(root.join("var")).unwrap();
    ioctl::create_subvolume(&root.join("var"), "inner".as_ref()).unwrap();
    ioctl::create_subvolume(&root.join("var/inner"), "deeper".as_ref()).unwrap();
    fs::write(root.join("var/inner/deeper/f"), b"x").unwrap();
    d.put(&id("ctr")).unwrap();
    d.remove(&id("ctr")).unwrap();
    assert!(!s.root.join("btrfs/subvolumes/ctr").exists());
    assert_eq!(
        fs::read_dir(s.root.join("btrfs/.thinsnap/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_half_built_subvolume_is_destroyed_at_open() {
    let mut s = Btrfs::new();
    s.d()
        .create(&id("base"), None, &CreateOpts::default())
        .unwrap();
    let tmp = s.root.join("btrfs/.thinsnap/tmp");
    // A snapshot a crash left before its rename into subvolumes/.
    ioctl::snapshot(
        &s.root.join("btrfs/subvolumes/base"),
        &tmp,
        "create-half-0123456789abcdef0123456789abcdef".as_ref(),
        false,
    )
    .unwrap();
    fs::write(
        s.root.join("btrfs/.thinsnap/layers/half"),
        b"{\"parent\":\"base\"}",
    )
    .unwrap();
    s.reopen();
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(!s.root.join("btrfs/.thinsnap/layers/half").exists());
    let ids: Vec<String> = s
        .d()
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["base"]);
}

#[test]
fn refuses_a_root_that_is_not_btrfs() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let err = BtrfsDriver::open(dir.path(), &[]).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("not btrfs") && msg.contains("subvolumes"),
        "{msg}"
    );
    assert!(!dir.path().join("btrfs/subvolumes").exists());
}
