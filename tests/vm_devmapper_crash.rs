//! Crash consistency of the devicemapper backend: the `thinsnap` binary is
//! killed with SIGKILL at each failpoint of pool creation, base set-up,
//! create, remove, activation, mount and unmount; the next start must find
//! the pool's thin ids equal to the metadata's, the transaction ids in
//! step, the interrupted operation fully done or fully undone, committed
//! data intact, and the store fully usable.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use common::DmStore;
use thinsnap::snapshot::{CreateOpts, Driver, LayerId};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// Runs `thinsnap --driver devicemapper --root ROOT <args>` with `failpoint`
/// armed to kill; returns true when it died by SIGKILL, false on a normal
/// exit (then it must have succeeded).
fn thinsnap(root: &Path, args: &[&str], failpoint: Option<&str>) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
    cmd.args(["--driver", "devicemapper", "--root"]).arg(root);
    for o in common::DM_TEST_OPTS {
        cmd.args(["-s", o]);
    }
    cmd.args(args);
    if let Some(fp) = failpoint {
        cmd.env("THINSNAP_FAILPOINTS", format!("{fp}=kill"));
    }
    let out = cmd.output().unwrap();
    if out.status.signal() == Some(9) {
        return true;
    }
    assert!(
        out.status.success(),
        "thinsnap {args:?} (failpoint {failpoint:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

fn write(d: &dyn Driver, layer: &str, data: &[u8]) {
    let root = d.get(&id(layer), None).unwrap();
    fs::write(root.join("data"), data).unwrap();
    nix::unistd::syncfs(fs::File::open(&root).unwrap()).unwrap();
    d.put(&id(layer)).unwrap();
}

fn read(d: &dyn Driver, layer: &str) -> Vec<u8> {
    let root = d.get(&id(layer), None).unwrap();
    let data = fs::read(root.join("data")).unwrap_or_default();
    d.put(&id(layer)).unwrap();
    data
}

/// A store with a committed layer `p` holding known data.
fn store_with_parent() -> DmStore {
    let store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("p"), None, &CreateOpts::default()).unwrap();
    write(d, "p", b"committed before the crash");
    store
}

/// Whether the layer journal's last line for `layer` records it (the
/// store was reopened, so the journal holds only live records).
fn has_record(home: &Path, layer: &str) -> bool {
    let text = fs::read_to_string(home.join("thinsnap/layers.journal")).unwrap_or_default();
    let mut present = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["id"] == layer {
            present = v.get("layer").is_some();
        }
    }
    present
}

/// The layer either exists completely (metadata file, thin id, record,
/// mountable with its parent's data) or not at all.
fn assert_all_or_nothing(store: &DmStore, layer: &str) -> bool {
    let d = store.driver();
    let home = store.root().join("devicemapper");
    let file = home.join("metadata").join(layer).exists();
    let record = has_record(&home, layer);
    if d.exists(&id(layer)) {
        assert!(
            file && record,
            "{layer}: listed but file={file} record={record}"
        );
        assert_eq!(read(d, layer), b"committed before the crash");
        true
    } else {
        assert!(
            !file && !record,
            "{layer}: gone but file={file} record={record} remain"
        );
        false
    }
}

#[test]
fn create_interrupted_at_every_step() {
    common::require_vm();
    let mut store = store_with_parent();
    for (k, fp) in [
        "devmapper.create.after_txn",
        "devmapper.create.after_snap",
        "devmapper.create.after_sidecar",
        "devmapper.create.after_file",
        "devmapper.create.after_commit",
    ]
    .iter()
    .enumerate()
    {
        let layer = format!("c{k}");
        store.driver = None; // the CLI process owns the store now
        assert!(
            thinsnap(store.root(), &["create", &layer, "--parent", "p"], Some(fp)),
            "{fp}: not killed"
        );
        store.reopen();
        store.assert_consistent();
        let exists = assert_all_or_nothing(&store, &layer);
        // Only a create killed after its commit is done.
        assert_eq!(exists, *fp == "devmapper.create.after_commit", "{fp}");
        if !exists {
            store
                .driver()
                .create(&id(&layer), Some(&id("p")), &CreateOpts::default())
                .unwrap();
        }
        assert_eq!(read(store.driver(), &layer), b"committed before the crash");
        store.assert_consistent();
    }
    common::thin_check_clean(store);
}

/// Kills `thinsnap rm` at each remove failpoint (with `extra` options) and
/// checks the outcome; `survives(fp)` says whether the layer must still be
/// there afterwards.
fn remove_cases(extra: &[&str], survives: impl Fn(&str) -> bool) {
    let mut store = store_with_parent();
    for (k, fp) in [
        "devmapper.remove.after_mark",
        "devmapper.remove.after_deactivate",
        "devmapper.remove.after_txn",
        "devmapper.remove.after_delete",
        "devmapper.remove.after_file",
        "devmapper.remove.after_commit",
    ]
    .iter()
    .enumerate()
    {
        let layer = format!("r{k}");
        store
            .driver()
            .create(&id(&layer), Some(&id("p")), &CreateOpts::default())
            .unwrap();
        store.driver = None;
        let mut args = vec!["rm", layer.as_str()];
        for o in extra {
            args.splice(0..0, ["-s", o]);
        }
        let killed = thinsnap(store.root(), &args, Some(fp));
        store.reopen();
        store.assert_consistent();
        let exists = assert_all_or_nothing(&store, &layer);
        if !killed {
            // The failpoint is not on this path (no discard, no mark).
            assert!(!exists, "{fp}: rm finished");
            continue;
        }
        assert_eq!(exists, survives(fp), "{fp}");
        if exists {
            store.driver().remove(&id(&layer)).unwrap();
        }
        store.assert_consistent();
    }
    assert_eq!(read(store.driver(), "p"), b"committed before the crash");
    common::thin_check_clean(store);
}

#[test]
fn remove_interrupted_at_every_step() {
    common::require_vm();
    // Loopback pools discard a device before deleting it, so removal is
    // marked durable first: every interruption completes at the next start.
    remove_cases(&[], |_| false);
}

#[test]
fn remove_without_discard_interrupted_at_every_step() {
    common::require_vm();
    // Without discard, a kill before the delete transaction opens leaves the
    // layer intact; from the transaction on, the rollback completes it.
    remove_cases(&["dm.blkdiscard=false"], |fp| {
        fp == "devmapper.remove.after_deactivate"
    });
}

#[test]
fn pool_and_base_setup_interrupted_at_every_step() {
    common::require_vm();
    for fp in [
        "devmapper.pool.after_loops",
        "devmapper.pool.after_create",
        "devmapper.create.after_txn",
        "devmapper.base.after_thin",
        "devmapper.base.after_file",
        "devmapper.base.after_mkfs",
    ] {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            thinsnap(dir.path(), &["init"], Some(fp)),
            "{fp}: not killed"
        );
        assert!(!thinsnap(dir.path(), &["init"], None));
        let store = DmStore {
            driver: Some(
                thinsnap::backend::devmapper::DevmapperDriver::open(
                    dir.path(),
                    &common::DM_TEST_OPTS
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )
                .unwrap(),
            ),
            opts: common::DM_TEST_OPTS.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        store.assert_consistent();
        let d = store.driver();
        d.create(&id("after"), None, &CreateOpts::default())
            .unwrap();
        write(d, "after", b"works");
        assert_eq!(read(d, "after"), b"works", "{fp}");
        let base: serde_json::Value = serde_json::from_slice(
            &fs::read(store.root().join("devicemapper/metadata/base")).unwrap(),
        )
        .unwrap();
        assert_eq!(base["initialized"], true, "{fp}");
        common::thin_check_clean(store);
    }
}

#[test]
fn mount_and_unmount_interrupted() {
    common::require_vm();
    let mut store = store_with_parent();
    for fp in [
        "devmapper.activate.after_create",
        "devmapper.get.after_mount",
    ] {
        store.driver = None;
        assert!(
            thinsnap(store.root(), &["mount", "p"], Some(fp)),
            "{fp}: not killed"
        );
        let d = store.reopen();
        // Whatever the crash left (an active device, a mount) is adopted or
        // redone; a get/put cycle works and leaves nothing mounted.
        let refs = d.device_set().refs("p");
        for _ in 0..refs {
            d.put(&id("p")).unwrap();
        }
        assert_eq!(read(d, "p"), b"committed before the crash", "{fp}");
        store.assert_consistent();
    }
    store.driver = None;
    assert!(!thinsnap(store.root(), &["mount", "p"], None));
    assert!(thinsnap(
        store.root(),
        &["umount", "p"],
        Some("devmapper.put.after_umount")
    ));
    let d = store.reopen();
    assert_eq!(d.device_set().refs("p"), 0, "unmounted before the kill");
    assert_eq!(read(d, "p"), b"committed before the crash");
    store.assert_consistent();
    common::thin_check_clean(store);
}

/// Runs `thinsnap apply ID --parent P` with `tar` on stdin and `fp` armed;
/// true when killed.
fn apply_killed(root: &Path, layer: &str, tar: &Path, fp: &str) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
    cmd.args(["--driver", "devicemapper", "--root"]).arg(root);
    for o in common::DM_TEST_OPTS {
        cmd.args(["-s", o]);
    }
    let out = cmd
        .args(["apply", layer, "--parent", "p"])
        .env("THINSNAP_FAILPOINTS", format!("{fp}=kill"))
        .stdin(fs::File::open(tar).unwrap())
        .output()
        .unwrap();
    out.status.signal() == Some(9)
}

#[test]
fn apply_diff_interrupted_leaves_a_layer_marked_incomplete_never_served() {
    common::require_vm();
    let mut store = store_with_parent();
    let tar = store.root().join("layer.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
        let body = vec![b'x'; 3 << 20];
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big", &body[..]).unwrap();
        b.finish().unwrap();
    }
    for fp in thinsnap::snapshot::naive::FAILPOINTS {
        let layer = format!("a-{}", fp.rsplit('.').next().unwrap());
        store.driver = None;
        assert!(
            apply_killed(store.root(), &layer, &tar, fp),
            "{fp}: not killed"
        );
        store.reopen();
        store.assert_consistent();
        let d = store.driver();
        let info = d
            .list()
            .unwrap()
            .into_iter()
            .find(|l| l.id.as_str() == layer)
            .unwrap_or_else(|| panic!("{fp}: the layer was created before the apply"));
        assert!(info.incomplete, "{fp}: marked incomplete");
        let e = d.get(&id(&layer), None).unwrap_err();
        assert_eq!(e.kind(), thinsnap::snapshot::ErrorKind::Incomplete, "{e}");
        let e = d
            .create(&id("child"), Some(&id(&layer)), &CreateOpts::default())
            .unwrap_err();
        assert_eq!(e.kind(), thinsnap::snapshot::ErrorKind::Incomplete, "{e}");
        // The client's way out: remove it and apply again.
        d.remove(&id(&layer)).unwrap();
        d.create(&id(&layer), Some(&id("p")), &CreateOpts::default())
            .unwrap();
        d.apply_diff(
            &id(&layer),
            Some(&id("p")),
            &mut fs::File::open(&tar).unwrap(),
        )
        .unwrap();
        let root = d.get(&id(&layer), None).unwrap();
        assert_eq!(fs::metadata(root.join("big")).unwrap().len(), 3 << 20);
        assert_eq!(
            fs::read(root.join("data")).unwrap(),
            b"committed before the crash"
        );
        d.put(&id(&layer)).unwrap();
        store.assert_consistent();
    }
    common::thin_check_clean(store);
}

#[test]
fn pool_extend_interrupted_is_finished_by_running_it_again() {
    common::require_vm();
    let mut store = store_with_parent();
    let total = |store: &DmStore| {
        store
            .driver()
            .device_set()
            .pool_status()
            .unwrap()
            .total_data_blocks
    };
    let before = total(&store);
    for (k, fp) in ["pool.extend.after_file", "pool.extend.after_capacity"]
        .iter()
        .enumerate()
    {
        let size = format!("{}G", 3 + k);
        store.driver = None;
        assert!(
            thinsnap(store.root(), &["pool", "extend", "--data", &size], Some(fp)),
            "{fp}: not killed"
        );
        store.reopen();
        store.assert_consistent();
        assert_eq!(
            read(store.driver(), "p"),
            b"committed before the crash",
            "{fp}"
        );
        store.driver = None;
        assert!(!thinsnap(
            store.root(),
            &["pool", "extend", "--data", &size],
            None
        ));
        store.reopen();
        let blocks = total(&store);
        assert!(blocks > before, "{fp}: grown");
        let block = store.driver().device_set().block_size().0;
        assert_eq!(
            blocks * block,
            (3 + k as u64) << 30,
            "{fp}: exactly the size asked for"
        );
        store
            .driver()
            .create(
                &id(&format!("after-{k}")),
                Some(&id("p")),
                &CreateOpts::default(),
            )
            .unwrap();
        store.assert_consistent();
    }
    common::thin_check_clean(store);
}
