//! direct-lvm and adopted pools on real disks inside the test VM (run with
//! `thinsnap-vm test --disk 1G --disk 256M --target vm_directlvm`):
//! setup on a blank disk, refusal of a disk that holds a filesystem,
//! restart idempotence, a refused config change, autoextend by the lvm
//! profile, and Docker's ownership rules for `dm.thinpooldev`.
//!
//! One test function per pool kind, run in order inside it: the VG is
//! `docker` for every direct-lvm store, so the steps cannot overlap.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use thinsnap::backend::devmapper::DevmapperDriver;
use thinsnap::backend::devmapper::admin;
use thinsnap::snapshot::{CreateOpts, Driver, LayerId};

const MIB: u64 = 1 << 20;
/// Blank disk for the direct-lvm pool.
const BLANK: &str = "/dev/vda";
/// Disk that gets an ext4 filesystem and must be refused.
const HAS_FS: &str = "/dev/vdb";

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Runs a tool; panics with its stderr when it fails; returns stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// lvm without udev, as thinsnap runs it in the VM.
fn lvm(tool: &str, args: &[&str]) -> String {
    let mut v = vec![
        "--config",
        thinsnap::backend::devmapper::lvm::NO_UDEV_CONFIG,
    ];
    v.extend_from_slice(args);
    run(tool, &v)
}

fn open(root: &Path, opts: &[&str]) -> thinsnap::snapshot::Result<DevmapperDriver> {
    DevmapperDriver::open(
        root,
        &opts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
}

fn cli(root: &Path, opts: &[&str], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
    cmd.arg("--root")
        .arg(root)
        .args(["--driver", "devicemapper"]);
    for o in opts {
        cmd.args(["--storage-opt", o]);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_bytes(path: &Path, len: usize, byte: u8) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&vec![byte; len]).unwrap();
    f.sync_all().unwrap();
}

/// Deactivates VG `docker` and wipes it from the disk (the runner fails a
/// test that leaves dm devices behind).
fn remove_vg() {
    lvm("vgchange", &["-an", "docker"]);
    lvm("vgremove", &["-ff", "-y", "docker"]);
    lvm("pvremove", &["-ff", "-y", BLANK]);
}

#[test]
fn direct_lvm_setup_refusals_restart_and_autoextend() {
    common::require_vm();
    assert!(
        Path::new(BLANK).exists() && Path::new(HAS_FS).exists(),
        "run with two disks: thinsnap-vm test --disk 1G --disk 256M --target vm_directlvm"
    );

    // A disk with a filesystem is refused, and left as it was.
    run("mkfs.ext4", &["-q", "-F", HAS_FS]);
    let refused_root = tempfile::tempdir().unwrap();
    let e = open(
        refused_root.path(),
        &[&format!("dm.directlvm_device={HAS_FS}")],
    )
    .err()
    .expect("a disk holding ext4 must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{HAS_FS} has a filesystem already (ext4)"))
            && msg.contains("dm.directlvm_device_force=true"),
        "{msg}"
    );
    assert_eq!(
        run("blkid", &["-o", "value", "-s", "TYPE", HAS_FS]).trim(),
        "ext4"
    );
    let pvs = lvm("pvs", &["--noheadings", "-o", "pv_name"]);
    assert!(!pvs.contains(HAS_FS), "no PV was made on {HAS_FS}: {pvs}");

    // Setup on the blank disk: VG docker, thin pool docker/thinpool with
    // 512 KiB chunks and zeroing off, the profile attached.
    let root = tempfile::tempdir().unwrap();
    let opts = [
        &format!("dm.directlvm_device={BLANK}") as &str,
        "dm.thinp_percent=40",
        "dm.thinp_metapercent=1",
        "dm.thinp_autoextend_threshold=60",
        "dm.thinp_autoextend_percent=50",
        "dm.basesize=512M",
    ];
    let d = open(root.path(), &opts).unwrap_or_else(|e| panic!("direct-lvm setup: {e}"));
    let lvs = lvm(
        "lvs",
        &[
            "--noheadings",
            "--separator",
            ",",
            "--units",
            "b",
            "-o",
            "lv_name,segtype,chunk_size,zero,lv_profile",
            "docker/thinpool",
        ],
    );
    let f: Vec<&str> = lvs.trim().split(',').collect();
    assert_eq!(f[0], "thinpool", "{lvs}");
    assert_eq!(f[1], "thin-pool", "{lvs}");
    assert_eq!(f[2], "524288B", "{lvs}");
    assert!(
        f[3].is_empty() || f[3] == "unknown",
        "zeroing is off: {lvs}"
    );
    assert_eq!(f[4], "docker-thinpool", "{lvs}");
    let profile = fs::read_to_string("/etc/lvm/profile/docker-thinpool.profile").unwrap();
    assert!(
        profile.contains("thin_pool_autoextend_threshold=60")
            && profile.contains("thin_pool_autoextend_percent=50"),
        "{profile}"
    );
    let recorded = fs::read_to_string(root.path().join("devicemapper/setup-config.json")).unwrap();
    assert_eq!(
        recorded,
        format!(
            r#"{{"Device":"{BLANK}","ThinpPercent":40,"ThinpMetaPercent":1,"AutoExtendPercent":50,"AutoExtendThreshold":60}}"#
        )
    );
    assert_eq!(d.device_set().pool().name, "docker-thinpool");
    d.create(&id("layer"), None, &CreateOpts::default())
        .unwrap();
    let dir = d.get(&id("layer"), None).unwrap();
    write_bytes(&dir.join("kept"), MIB as usize, 7);
    d.put(&id("layer")).unwrap();
    let pool_tid = d.device_set().pool_transaction_id();
    drop(d);

    // Restart with the same config: a no-op that finds everything.
    let d = open(root.path(), &opts).unwrap_or_else(|e| panic!("restart: {e}"));
    assert_eq!(d.device_set().pool_transaction_id(), pool_tid);
    let dir = d.get(&id("layer"), None).unwrap();
    assert_eq!(fs::read(dir.join("kept")).unwrap(), vec![7u8; MIB as usize]);
    d.put(&id("layer")).unwrap();
    let (code, out, err) = cli(root.path(), &opts, &["pool", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["pool_name"], "docker-thinpool", "{out}");
    assert_eq!(st["lvm_volume"], "docker/thinpool", "{out}");
    drop(d);

    // A changed config is refused before any lvm command.
    let mut changed = opts.to_vec();
    changed[3] = "dm.thinp_autoextend_threshold=70";
    let e = open(root.path(), &changed)
        .err()
        .expect("a changed direct-lvm config must be refused");
    assert!(
        e.to_string()
            .contains("changing direct-lvm config is not supported"),
        "{e}"
    );

    // Fill past the profile's threshold; one `pool autoextend` pass grows
    // the pool by the profile's percent through lvextend --use-policies
    // (what dmeventd would do; the VM runs no dmeventd).
    let d = open(root.path(), &opts).unwrap();
    let set = d.device_set();
    let before = set.pool_status().unwrap();
    d.create(&id("filler"), None, &CreateOpts::default())
        .unwrap();
    let dir = d.get(&id("filler"), None).unwrap();
    let mut n = 0;
    loop {
        let s = set.pool_status().unwrap();
        if s.used_data_blocks * 100 >= s.total_data_blocks * 65 {
            break;
        }
        write_bytes(&dir.join(format!("fill-{n}")), 8 * MIB as usize, n as u8);
        nix::unistd::syncfs(fs::File::open(&dir).unwrap()).unwrap();
        n += 1;
        assert!(n < 100, "the pool never reached 65%");
    }
    drop(d);
    let (code, out, err) = cli(root.path(), &opts, &["pool", "autoextend", "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["threshold"], 60, "{out}");
    assert!(
        r["extended"]["method"]
            .as_str()
            .unwrap_or("")
            .starts_with("lvextend --use-policies docker/thinpool"),
        "{out}"
    );
    let d = open(root.path(), &opts).unwrap();
    let after = d.device_set().pool_status().unwrap();
    assert!(
        after.total_data_blocks * 100 >= before.total_data_blocks * 140,
        "the pool grew by about 50%: {} -> {} blocks",
        before.total_data_blocks,
        after.total_data_blocks
    );
    let h =
        admin::PoolHealth::read(d.device_set(), admin::Thresholds::new(80, 90).unwrap()).unwrap();
    assert!(h.data_used_percent < 60.0, "{h:?}");
    let dir = d.get(&id("filler"), None).unwrap();
    for i in 0..n {
        assert_eq!(
            fs::read(dir.join(format!("fill-{i}"))).unwrap(),
            vec![i as u8; 8 * MIB as usize]
        );
    }
    d.put(&id("filler")).unwrap();
    d.cleanup().unwrap();
    drop(d);
    remove_vg();
}

/// A plain dm thin pool over two loop files, made as an admin would with
/// dmsetup; removed (with its loops) on drop.
struct PlainPool {
    name: String,
    loops: Vec<String>,
    _dir: tempfile::TempDir,
}

impl PlainPool {
    fn new(name: &str) -> PlainPool {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let meta = dir.path().join("meta");
        fs::File::create(&data).unwrap().set_len(512 * MIB).unwrap();
        fs::File::create(&meta).unwrap().set_len(16 * MIB).unwrap();
        let attach = |p: &Path| {
            run("losetup", &["-f", "--show", p.to_str().unwrap()])
                .trim()
                .to_string()
        };
        let data_loop = attach(&data);
        let meta_loop = attach(&meta);
        let table = format!(
            "0 {} thin-pool {meta_loop} {data_loop} 128 1024 1 skip_block_zeroing",
            512 * MIB / 512
        );
        run("dmsetup", &["create", name, "--table", &table]);
        PlainPool {
            name: name.to_string(),
            loops: vec![data_loop, meta_loop],
            _dir: dir,
        }
    }

    fn message(&self, msg: &str) {
        run("dmsetup", &["message", &self.name, "0", msg]);
    }
}

impl Drop for PlainPool {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup")
            .args(["remove", "--retry", &self.name])
            .env("DM_DISABLE_UDEV", "1")
            .status();
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

#[test]
fn adopting_an_existing_pool_follows_dockers_ownership_rules() {
    common::require_vm();
    let opts = ["dm.thinpooldev=adopted-pool", "dm.basesize=512M"];

    // A pool with a non-zero transaction id is not ours to take.
    let pool = PlainPool::new("adopted-pool");
    pool.message("set_transaction_id 0 5");
    let root = tempfile::tempdir().unwrap();
    let e = open(root.path(), &opts)
        .err()
        .expect("non-zero transaction id");
    assert!(
        e.to_string().contains(
            "Unable to take ownership of thin-pool (adopted-pool) with non-zero transaction ID"
        ),
        "{e}"
    );
    pool.message("set_transaction_id 5 0");

    // Nor one with used data blocks.
    pool.message("create_thin 7");
    let devno = fs::read_to_string(
        Path::new("/sys/block")
            .read_dir()
            .unwrap()
            .flatten()
            .find(|e| {
                fs::read_to_string(e.path().join("dm/name"))
                    .is_ok_and(|n| n.trim() == "adopted-pool")
            })
            .unwrap()
            .path()
            .join("dev"),
    )
    .unwrap();
    run(
        "dmsetup",
        &[
            "create",
            "adopted-thin",
            "--table",
            &format!("0 {} thin {} 7", 64 * MIB / 512, devno.trim()),
        ],
    );
    run("dmsetup", &["mknodes", "adopted-thin"]);
    run(
        "dd",
        &[
            "if=/dev/zero",
            "of=/dev/mapper/adopted-thin",
            "bs=1M",
            "count=4",
            "oflag=direct",
        ],
    );
    run("dmsetup", &["remove", "adopted-thin"]);
    let e = open(root.path(), &opts).err().expect("used data blocks");
    assert!(
        e.to_string().contains(
            "Unable to take ownership of thin-pool (adopted-pool) that already has used data blocks"
        ),
        "{e}"
    );
    drop(pool);

    // An empty pool is adopted; a restart matches its transaction id.
    let pool = PlainPool::new("adopted-pool");
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path(), &opts).unwrap_or_else(|e| panic!("adopting: {e}"));
    d.create(&id("l1"), None, &CreateOpts::default()).unwrap();
    let tid = d.device_set().pool_transaction_id();
    assert!(tid > 0);
    d.cleanup().unwrap();
    drop(d);
    assert!(
        Path::new("/sys/class/block")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| fs::read_to_string(e.path().join("dm/name"))
                .is_ok_and(|n| n.trim() == "adopted-pool")),
        "an adopted pool is never removed by thinsnap"
    );
    let d = open(root.path(), &opts).unwrap_or_else(|e| panic!("restart: {e}"));
    assert!(d.exists(&id("l1")));
    d.cleanup().unwrap();
    drop(d);

    // Someone else moved the pool's transaction id: refused, not reused.
    pool.message(&format!("set_transaction_id {tid} {}", tid + 3));
    let e = open(root.path(), &opts)
        .err()
        .expect("mismatched transaction id");
    assert!(
        e.to_string().contains(&format!(
            "thin-pool adopted-pool has transaction id {} but the metadata",
            tid + 3
        )) && e.to_string().contains("do not belong together"),
        "{e}"
    );
    drop(pool);
}
