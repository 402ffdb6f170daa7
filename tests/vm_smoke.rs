//! First dm-thin test, straight through the devicemapper crate (no dmsetup):
//! loop-backed pool → thin device → xfs → snapshot → copy-on-write checked
//! by content → teardown that leaves nothing behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use devicemapper::{DM, DevId, DmName, DmOptions};
use loopdev::{LoopControl, LoopDevice};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

const POOL: &str = "thinsnap-smoke-pool";
const ORIGIN: &str = "thinsnap-smoke-origin";
const SNAP: &str = "thinsnap-smoke-snap";
const THIN_SECTORS: u64 = 1 << 21; // 1 GiB virtual

/// Owns everything the test creates and tears it down in reverse order,
/// also when an assertion fails half-way.
struct World {
    dm: DM,
    dir: tempfile::TempDir,
    loops: Vec<LoopDevice>,
    mounts: Vec<PathBuf>,
    devices: Vec<String>,
}

impl World {
    fn dev(&self, name: &str) -> PathBuf {
        let info = self
            .dm
            .device_info(&DevId::Name(DmName::new(name).unwrap()))
            .unwrap();
        PathBuf::from(format!("/dev/dm-{}", info.device().minor))
    }

    fn create(&mut self, name: &str, table: (u64, u64, String, String)) {
        let n = DmName::new(name).unwrap();
        self.dm
            .device_create(n, None, DmOptions::default())
            .unwrap();
        self.devices.push(name.to_string());
        self.dm
            .table_load(&DevId::Name(n), &[table], DmOptions::default())
            .unwrap();
        self.dm
            .device_suspend(&DevId::Name(n), DmOptions::default())
            .unwrap(); // resume
    }

    fn message(&self, msg: &str) {
        self.dm
            .target_msg(&DevId::Name(DmName::new(POOL).unwrap()), Some(0), msg)
            .unwrap_or_else(|e| panic!("pool message {msg:?}: {e}"));
    }

    fn mount_xfs(&mut self, dev: &Path, at: &Path) {
        fs::create_dir_all(at).unwrap();
        mount(Some(dev), at, Some("xfs"), MsFlags::empty(), Some("nouuid")).unwrap();
        self.mounts.push(at.to_path_buf());
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(m) = self.mounts.pop() {
            if let Err(e) = umount2(&m, MntFlags::empty()) {
                errors.push(format!("umount {}: {e}", m.display()));
            }
        }
        while let Some(d) = self.devices.pop() {
            if d == POOL {
                // Delete the thin ids before the pool goes away.
                for id in [2, 1] {
                    let _ = self.dm.target_msg(
                        &DevId::Name(DmName::new(POOL).unwrap()),
                        Some(0),
                        &format!("delete {id}"),
                    );
                }
            }
            if let Err(e) = self
                .dm
                .device_remove(&DevId::Name(DmName::new(&d).unwrap()), DmOptions::default())
            {
                errors.push(format!("remove {d}: {e}"));
            }
        }
        for l in self.loops.drain(..) {
            // Autoclear detaches them once the pool closes them; detaching an
            // already-cleared device is harmless.
            let _ = l.detach();
        }
        errors
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn sparse(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn attach(path: &Path) -> LoopDevice {
    let lc = LoopControl::open().unwrap();
    let ld = lc.next_free().unwrap();
    ld.with().autoclear(true).attach(path).unwrap();
    ld
}

fn devno(ld: &LoopDevice) -> String {
    format!("{}:{}", ld.major().unwrap(), ld.minor().unwrap())
}

#[test]
fn thin_pool_snapshot_copy_on_write() {
    common::require_vm();
    let mut w = World {
        dm: DM::new().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        loops: Vec::new(),
        mounts: Vec::new(),
        devices: Vec::new(),
    };
    let data = w.dir.path().join("data");
    let meta = w.dir.path().join("metadata");
    sparse(&data, 512 << 20);
    sparse(&meta, 32 << 20);
    let data_loop = attach(&data);
    let meta_loop = attach(&meta);
    let pool_table = (
        0,
        (512u64 << 20) / 512,
        "thin-pool".to_string(),
        format!(
            "{} {} 128 32768 1 skip_block_zeroing",
            devno(&meta_loop),
            devno(&data_loop)
        ),
    );
    w.loops.push(data_loop);
    w.loops.push(meta_loop);
    w.create(POOL, pool_table);
    let pool_dev = {
        let info =
            w.dm.device_info(&DevId::Name(DmName::new(POOL).unwrap()))
                .unwrap();
        format!("{}:{}", info.device().major, info.device().minor)
    };

    w.message("create_thin 1");
    w.create(
        ORIGIN,
        (0, THIN_SECTORS, "thin".into(), format!("{pool_dev} 1")),
    );
    let origin_dev = w.dev(ORIGIN);
    common::run_tool("mkfs.xfs", &["-q", origin_dev.to_str().unwrap()]);
    let origin_mnt = w.dir.path().join("origin");
    w.mount_xfs(&origin_dev, &origin_mnt);
    fs::write(origin_mnt.join("file"), b"written before the snapshot").unwrap();
    nix::unistd::syncfs(fs::File::open(&origin_mnt).unwrap()).unwrap();

    // Snapshot of an active origin: suspend it so the pool sees a stable tree.
    let origin_id = DevId::Name(DmName::new(ORIGIN).unwrap());
    w.dm.device_suspend(
        &origin_id,
        DmOptions::default().set_flags(devicemapper::DmFlags::DM_SUSPEND),
    )
    .unwrap();
    w.message("create_snap 2 1");
    w.dm.device_suspend(&origin_id, DmOptions::default())
        .unwrap();

    w.create(
        SNAP,
        (0, THIN_SECTORS, "thin".into(), format!("{pool_dev} 2")),
    );
    let snap_dev = w.dev(SNAP);
    let snap_mnt = w.dir.path().join("snap");
    w.mount_xfs(&snap_dev, &snap_mnt);

    assert_eq!(
        fs::read(snap_mnt.join("file")).unwrap(),
        b"written before the snapshot"
    );
    fs::write(snap_mnt.join("file"), b"changed in the snapshot").unwrap();
    fs::write(snap_mnt.join("only-in-snap"), vec![7u8; 1 << 20]).unwrap();
    fs::write(origin_mnt.join("only-in-origin"), b"origin moves on").unwrap();
    nix::unistd::syncfs(fs::File::open(&snap_mnt).unwrap()).unwrap();
    nix::unistd::syncfs(fs::File::open(&origin_mnt).unwrap()).unwrap();

    assert_eq!(
        fs::read(origin_mnt.join("file")).unwrap(),
        b"written before the snapshot"
    );
    assert!(!origin_mnt.join("only-in-snap").exists());
    assert_eq!(
        fs::read(snap_mnt.join("file")).unwrap(),
        b"changed in the snapshot"
    );
    assert!(!snap_mnt.join("only-in-origin").exists());

    // Re-read from disk, not the page cache: unmount and mount again.
    let errors = {
        let mut errs = Vec::new();
        for m in w.mounts.drain(..).rev().collect::<Vec<_>>() {
            if let Err(e) = umount2(&m, MntFlags::empty()) {
                errs.push(format!("{e}"));
            }
        }
        errs
    };
    assert!(errors.is_empty(), "{errors:?}");
    w.mount_xfs(&origin_dev, &origin_mnt);
    w.mount_xfs(&snap_dev, &snap_mnt);
    assert_eq!(
        fs::read(origin_mnt.join("file")).unwrap(),
        b"written before the snapshot"
    );
    assert_eq!(
        fs::read(snap_mnt.join("file")).unwrap(),
        b"changed in the snapshot"
    );
    assert_eq!(
        fs::read(snap_mnt.join("only-in-snap")).unwrap().len(),
        1 << 20
    );

    let errors = w.teardown();
    assert!(errors.is_empty(), "teardown failed: {errors:?}");
    let left: Vec<String> = common::dm_device_names()
        .into_iter()
        .filter(|n| n.starts_with("thinsnap-smoke"))
        .collect();
    assert!(left.is_empty(), "dm devices left: {left:?}");
    let loops = common::loops_backed_by(w.dir.path());
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
}
