//! Helpers shared by the integration tests. Each test file includes this
//! module with `mod common;`, so not every helper is used by every file.
#![allow(dead_code)]

pub mod docker;
pub mod hammer;
pub mod service;

use std::path::Path;

/// Fails the test (never skips it) unless it runs inside the test VM with
/// device-mapper available, and says how to run it properly.
pub fn require_vm() {
    let in_vm = std::env::var("THINSNAP_IN_VM").is_ok_and(|v| v == "1");
    let dm = Path::new("/dev/mapper/control").exists();
    if !(in_vm && dm) {
        panic!(
            "this test needs a kernel with dm-thin and must run inside the thinsnap test VM \
             ({}): run `make test-vm`, or one target with \
             `cargo run --bin thinsnap-vm -- test --target <name>`",
            if dm {
                "not started by thinsnap-vm"
            } else {
                "/dev/mapper/control is missing here"
            }
        );
    }
}

/// Fails the test unless it runs as root (host root tests: loop, overlay, mounts).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (loop devices, mounts): run `make test-host` as root");
    }
}

/// Path → (mode, size, content hash) of everything under `dir`: compare
/// before and after to prove nothing there changed.
pub fn checksum_tree(dir: &Path) -> std::collections::BTreeMap<String, (u32, u64, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            if md.is_file() {
                std::fs::read(e.path()).unwrap().hash(&mut h);
            }
            if md.is_dir() {
                stack.push(e.path());
            }
            out.insert(
                e.path().display().to_string(),
                (md.mode(), md.len(), h.finish()),
            );
        }
    }
    out
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_backed_by(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in entries.flatten() {
        if let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(backing.trim()).starts_with(dir)
        {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Names of all active dm devices.
pub fn dm_device_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            if let Ok(n) = std::fs::read_to_string(e.path().join("dm/name")) {
                names.push(n.trim().to_string());
            }
        }
    }
    names.sort();
    names
}

/// Runs a tool (argument vector, no shell) and returns stdout; panics with
/// its stderr on failure.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A filesystem made by a test on a sparse file and mounted with `-o loop`
/// (autoclear: the loop device goes away with the mount). Dropping it,
/// also during a panic, unmounts everything below the mount point, then
/// the filesystem itself.
pub struct LoopFs {
    pub mountpoint: std::path::PathBuf,
    _image_dir: tempfile::TempDir,
}

impl LoopFs {
    /// `mkfs` (program and arguments, the image path is appended) on a
    /// sparse file of `size_mib`, mounted on the existing empty directory
    /// `mountpoint`.
    pub fn new(mkfs: &[&str], size_mib: u64, mountpoint: &Path) -> LoopFs {
        let image_dir = tempfile::tempdir().expect("temp dir for the image");
        let image = image_dir.path().join("fs.img");
        let f = std::fs::File::create(&image).expect("image file");
        f.set_len(size_mib << 20).expect("sparse image");
        drop(f);
        let image_s = image.to_str().expect("utf-8 temp path");
        let mut args: Vec<&str> = mkfs[1..].to_vec();
        args.push(image_s);
        run_tool(mkfs[0], &args);
        run_tool(
            "mount",
            &[
                "-o",
                "loop",
                image_s,
                mountpoint.to_str().expect("utf-8 path"),
            ],
        );
        LoopFs {
            mountpoint: mountpoint.to_path_buf(),
            _image_dir: image_dir,
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<std::path::PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| std::path::PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&self.mountpoint))
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in below {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Small pool sizes for dm-thin tests in the VM (sparse files on tmpfs).
pub const DM_TEST_OPTS: &[&str] = &[
    "dm.loopdatasize=2G",
    "dm.loopmetadatasize=64M",
    "dm.basesize=512M",
];

/// A devicemapper store in a temp dir. Dropping it (panic or not) unmounts
/// every layer, removes every dm device and the pool; the loop devices
/// detach by themselves.
pub struct DmStore {
    pub dir: tempfile::TempDir,
    pub opts: Vec<String>,
    pub driver: Option<thinsnap::backend::devmapper::DevmapperDriver>,
}

impl DmStore {
    /// A fresh store with `DM_TEST_OPTS` plus `extra` (later options win).
    pub fn new(extra: &[&str]) -> DmStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts: Vec<String> = DM_TEST_OPTS
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        let driver = thinsnap::backend::devmapper::DevmapperDriver::open(dir.path(), &opts)
            .unwrap_or_else(|e| panic!("opening a devicemapper store: {e}"));
        DmStore {
            dir,
            opts,
            driver: Some(driver),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn driver(&self) -> &thinsnap::backend::devmapper::DevmapperDriver {
        self.driver.as_ref().expect("store is open")
    }

    /// Drops the driver without clean-up (what a process exit does: mounts,
    /// dm devices and the pool stay) and opens the store again with `opts`.
    pub fn reopen_with(
        &mut self,
        opts: &[&str],
    ) -> thinsnap::snapshot::Result<&thinsnap::backend::devmapper::DevmapperDriver> {
        self.driver = None;
        let d = thinsnap::backend::devmapper::DevmapperDriver::open(
            self.dir.path(),
            &opts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        self.driver = Some(d);
        Ok(self.driver())
    }

    /// Reopens with no options (a restart that does not resize anything).
    pub fn reopen(&mut self) -> &thinsnap::backend::devmapper::DevmapperDriver {
        self.reopen_with(&[])
            .unwrap_or_else(|e| panic!("reopening: {e}"))
    }

    /// Thin ids the pool holds (from its metadata) and the ids the metadata
    /// files name, and the pool's and transaction file's transaction ids.
    pub fn consistency(&self) -> (Vec<u32>, Vec<u32>, u64, Option<u64>) {
        let set = self.driver().device_set();
        let mut pool_ids: Vec<u32> = set
            .thin_usage()
            .expect("thin_ls")
            .iter()
            .map(|u| u.id)
            .collect();
        pool_ids.sort();
        let mut meta_ids: Vec<u32> = set.devices().iter().map(|d| d.device_id).collect();
        meta_ids.sort();
        let pool_tid = set.pool_status().expect("pool status").transaction_id;
        let txn = std::fs::read(
            self.root()
                .join("devicemapper/metadata/transaction-metadata"),
        )
        .ok()
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b)
                    .expect("transaction-metadata is JSON")["open_transaction_id"]
                    .as_u64()
                    .expect("open_transaction_id")
        });
        (pool_ids, meta_ids, pool_tid, txn)
    }

    /// Asserts pool and metadata agree (ids and transaction id).
    pub fn assert_consistent(&self) {
        let (pool_ids, meta_ids, pool_tid, txn) = self.consistency();
        assert_eq!(
            pool_ids, meta_ids,
            "thin ids in the pool vs the metadata files"
        );
        if let Some(t) = txn {
            assert_eq!(
                t, pool_tid,
                "transaction-metadata vs the pool's transaction id"
            );
        }
        for d in self.driver().device_set().devices() {
            assert!(
                d.transaction_id <= pool_tid,
                "device {} has transaction id {} above the pool's {pool_tid}",
                d.hash,
                d.transaction_id
            );
        }
    }
}

/// Runs the `thinsnap` binary on `store` with its options; returns (exit
/// code, stdout, stderr).
pub fn cli(store: &DmStore, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_thinsnap"));
    cmd.arg("--root")
        .arg(store.root())
        .args(["--driver", "devicemapper"]);
    for o in &store.opts {
        cmd.args(["--storage-opt", o]);
    }
    let out = cmd.args(args).output().expect("running thinsnap");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Releases the pool (`thinsnap cleanup`) and runs `thin_check` on the
/// store's metadata file: clean after everything the test put it through.
pub fn thin_check_clean(mut store: DmStore) {
    let meta = store.root().join("devicemapper/devicemapper/metadata");
    store.driver = None;
    let (code, _, err) = cli(&store, &["cleanup"]);
    assert_eq!(code, 0, "cleanup: {err}");
    // The VM's /tmp is tmpfs, which has no O_DIRECT: check through a
    // read-only loop device.
    let lo = run_tool(
        "losetup",
        &["-f", "--show", "-r", &meta.display().to_string()],
    );
    let lo = lo.trim();
    let out = std::process::Command::new("thin_check")
        .arg(lo)
        .output()
        .unwrap();
    run_tool("losetup", &["-d", lo]);
    assert!(
        out.status.success(),
        "thin_check {}: {}{}",
        meta.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for DmStore {
    fn drop(&mut self) {
        let driver = match self.driver.take() {
            Some(d) => Some(d),
            None => {
                thinsnap::backend::devmapper::DevmapperDriver::open(self.dir.path(), &self.opts)
                    .ok()
            }
        };
        if let Some(d) = driver {
            use thinsnap::snapshot::Driver;
            if let Err(e) = d.cleanup() {
                eprintln!("DmStore clean-up: {e}");
            }
        }
    }
}
