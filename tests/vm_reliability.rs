//! The worst days, on real dm-thin: `thinsnap fsck` finding and repairing
//! every kind of damage, a pool that runs out of data space, a metadata
//! directory on a full filesystem, a device held busy by a process, loop
//! files moved or deleted under a running store.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{DmStore, cli};
use sha2::{Digest, Sha256};
use thinsnap::dm::{DmControl, ThinId};
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn write(d: &dyn Driver, layer: &str, name: &str, data: &[u8]) {
    let root = d.get(&id(layer), None).unwrap();
    fs::write(root.join(name), data).unwrap();
    nix::unistd::syncfs(fs::File::open(&root).unwrap()).unwrap();
    d.put(&id(layer)).unwrap();
}

fn sha(d: &dyn Driver, layer: &str, name: &str) -> String {
    let root = d.get(&id(layer), None).unwrap();
    let h = Sha256::digest(fs::read(root.join(name)).unwrap());
    d.put(&id(layer)).unwrap();
    h.iter().map(|x| format!("{x:02x}")).collect()
}

fn kinds(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut k: Vec<String> = v["remaining"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fsck_finds_every_kind_of_damage_and_repairs_it_without_losing_data() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    write(d, "img", "keep", b"image data");
    d.create(&id("ctr"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    write(d, "ctr", "mine", b"container data");
    d.create(&id("doomed"), None, &CreateOpts::default())
        .unwrap();
    let before = (sha(d, "img", "keep"), sha(d, "ctr", "mine"));
    let set = d.device_set();
    let ctl = DmControl::open().unwrap();
    let prefix = set.prefix().to_string();
    let pool_devno = set.pool().devno(&ctl).unwrap();
    // 1. An orphan thin id, and a dm device left active on it.
    set.pool()
        .create_thin(&ctl, ThinId::new(5000).unwrap())
        .unwrap();
    let leaked = format!("{prefix}-leaked");
    thinsnap::dm::thin::activate(
        &ctl,
        &leaked,
        pool_devno,
        ThinId::new(5000).unwrap(),
        thinsnap::units::Sectors(2048),
    )
    .unwrap();
    // 2. A device whose thin id is gone (deleted behind thinsnap's back).
    let doomed = set.device_info("doomed").unwrap().device_id;
    set.pool()
        .delete(&ctl, ThinId::new(doomed as u64).unwrap())
        .unwrap();
    // 3. A stale transaction: a create stopped after its snapshot.
    let tid = set.pool_status().unwrap().transaction_id;
    set.pool()
        .create_thin(&ctl, ThinId::new(4500).unwrap())
        .unwrap();
    let meta = store.root().join("devicemapper/metadata");
    store.driver = None;
    fs::write(
        meta.join("transaction-metadata"),
        format!(
            r#"{{"open_transaction_id":{},"device_hash":"half","device_id":4500}}"#,
            tid + 1
        ),
    )
    .unwrap();
    // 4. Unreadable device files: truncated, empty, garbage.
    fs::write(meta.join("trunc"), br#"{"device_id":7,"si"#).unwrap();
    fs::write(meta.join("empty"), b"").unwrap();
    fs::write(meta.join("garbage"), [0xffu8, 0, 0x13, 0x37]).unwrap();
    // 5. A stray temp file and a leaked mount.
    fs::write(meta.join(".tmp-ctr-123"), b"{\"device_id\":").unwrap();
    let leak_mnt = store.root().join("devicemapper/mnt/gone");
    fs::create_dir_all(&leak_mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &leak_mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();

    let (code, out, err) = cli(&store, &["fsck", "--json"]);
    assert_eq!(code, 4, "problems found and left: {out}{err}");
    assert_eq!(
        kinds(&out),
        [
            "leaked_device",
            "leaked_mount",
            "missing_thin_id",
            "orphan_thin_id",
            "stale_transaction",
            "stray_temp_file",
            "unreadable_file",
            "unreadable_file",
            "unreadable_file"
        ],
        "{out}"
    );
    let (_, text, _) = cli(&store, &["fsck"]);
    assert!(text.contains("thin id 5000"), "{text}");
    assert!(
        text.contains("unreadable device file(s) may own it"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}", meta.join("trunc").display())),
        "{text}"
    );
    // A dry run plans and changes nothing.
    let (code, plan, _) = cli(&store, &["fsck", "--repair", "--dry-run"]);
    assert_eq!(code, 4);
    assert!(
        plan.contains("would repair: roll back as Docker does"),
        "{plan}"
    );
    let (_, again, _) = cli(&store, &["fsck", "--json"]);
    assert_eq!(kinds(&again), kinds(&out), "dry run changed something");

    // First repair: everything but the orphan, held back while unreadable
    // files could own it.
    let (code, out, err) = cli(&store, &["fsck", "--repair"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("held back"), "{out}");
    assert!(meta.join(".quarantine/garbage").exists());
    assert!(!meta.join(".tmp-ctr-123").exists());
    // Second repair: the orphan goes.
    let (code, out, err) = cli(&store, &["fsck", "--repair"]);
    assert_eq!(code, 1, "found and repaired: {out}{err}");
    let (code, out, _) = cli(&store, &["fsck"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");

    let d = store.reopen();
    assert_eq!((sha(d, "img", "keep"), sha(d, "ctr", "mine")), before);
    assert!(!d.exists(&id("doomed")));
    store.assert_consistent();
    assert!(!common::dm_device_names().contains(&leaked));
    let d = store.driver();
    d.create(&id("after"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    common::thin_check_clean(store);
}

/// Writes with O_DIRECT (each block reaches the pool at once) until the
/// pool refuses; returns the error.
fn fill(path: &Path) -> std::io::Error {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc_o_direct())
        .open(path)
        .unwrap();
    let buf = AlignedBuf::new(1 << 20);
    for _ in 0..4096 {
        if let Err(e) = f.write_all(buf.as_slice()) {
            return e;
        }
    }
    panic!("4 GiB written into a pool of 320 MiB without an error");
}

fn libc_o_direct() -> i32 {
    nix::fcntl::OFlag::O_DIRECT.bits()
}

/// A page-aligned buffer of pseudo-random bytes (O_DIRECT needs alignment).
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let mut raw = vec![0u8; len + 4096];
        let off = 4096 - (raw.as_ptr() as usize % 4096);
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in raw.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        AlignedBuf { raw, off, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.off % 4096..self.off % 4096 + self.len]
    }
}

#[test]
fn a_full_pool_fails_writes_with_enospc_and_extend_brings_it_back() {
    common::require_vm();
    let store = DmStore::new(&[
        "dm.loopdatasize=320M",
        "dm.basesize=1G",
        "dm.min_free_space=1%",
        "dm.xfs_nospace_max_retries=0",
        "thinsnap.error_if_no_space=true",
    ]);
    let d = store.driver();
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    write(d, "img", "keep", &vec![7u8; 4 << 20]);
    let keep = sha(d, "img", "keep");
    d.create(&id("ctr"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    let root = d.get(&id("ctr"), None).unwrap();
    let e = fill(&root.join("filler"));
    assert_eq!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC),
        "writes into a full pool fail with ENOSPC at once: {e}"
    );
    let (code, out, _) = cli(&store, &["pool", "check"]);
    assert_eq!(code, 2, "a full pool is critical: {out}");
    let (_, status, _) = cli(&store, &["pool", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["pool_mode"], "out_of_data_space", "{status}");
    let e = d
        .create(&id("more"), Some(&id("img")), &CreateOpts::default())
        .unwrap_err();
    assert!(e.to_string().contains("free"), "the guard says why: {e}");
    let _ = fs::remove_file(root.join("filler"));
    d.put(&id("ctr")).unwrap();

    let (code, out, err) = cli(&store, &["pool", "extend", "--data", "+1G"]);
    assert_eq!(code, 0, "extend: {out}{err}");
    let (_, status, _) = cli(&store, &["pool", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["pool_mode"], "rw", "{status}");
    write(d, "ctr", "after", b"writes work again");
    d.create(&id("more"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    assert_eq!(sha(d, "img", "keep"), keep, "committed data intact");
    store.assert_consistent();
    common::thin_check_clean(store);
}

#[test]
fn a_full_metadata_directory_fails_cleanly_and_leaves_no_partial_json() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    write(d, "a", "f", b"kept");
    store.driver = None;
    // Move the metadata onto a tiny tmpfs and fill it to the last byte.
    let meta = store.root().join("devicemapper/metadata");
    let saved = store.root().join("metadata.saved");
    fs::rename(&meta, &saved).unwrap();
    fs::create_dir(&meta).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &meta,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256k,mode=0700"),
    )
    .unwrap();
    for e in fs::read_dir(&saved).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), meta.join(e.file_name())).unwrap();
        }
    }
    store.reopen();
    let mut filler = fs::File::create(meta.join(".filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    drop(filler);
    let d = store.driver();
    for layer in ["b", "c"] {
        let e = d
            .create(&id(layer), Some(&id("a")), &CreateOpts::default())
            .unwrap_err();
        let msg = format!("{e}");
        assert!(
            msg.contains("No space left") && msg.contains("metadata"),
            "the error names the file and the cause: {msg}"
        );
        assert!(!d.exists(&id(layer)));
    }
    for e in fs::read_dir(&meta).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".tmp-"), "temp file left: {name}");
        if !name.starts_with('.') {
            serde_json::from_slice::<serde_json::Value>(&fs::read(e.path()).unwrap())
                .unwrap_or_else(|err| panic!("{name} is not whole JSON: {err}"));
        }
    }
    store.assert_consistent();
    fs::remove_file(meta.join(".filler")).unwrap();
    let d = store.driver();
    d.create(&id("b"), Some(&id("a")), &CreateOpts::default())
        .unwrap();
    assert_eq!(sha(d, "b", "f"), sha(d, "a", "f"));
    store.assert_consistent();
    // Release the pool while the metadata is still where the store has it,
    // then keep the drop from reopening a store whose metadata is going.
    store.driver().cleanup().unwrap();
    store.driver = None;
    store.opts = vec!["thinsnap.this_store_is_gone=1".into()];
    nix::mount::umount2(&meta, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

#[test]
fn a_busy_device_names_its_holder_and_is_never_leaked() {
    common::require_vm();
    let store = DmStore::new(&[
        "dm.use_deferred_removal=false",
        "dm.use_deferred_deletion=false",
    ]);
    let d = store.driver();
    d.create(&id("x"), None, &CreateOpts::default()).unwrap();
    // A shell with its working directory inside the mount.
    let root = d.get(&id("x"), None).unwrap();
    let sleeper = Killed(
        Command::new("sleep")
            .arg("600")
            .current_dir(&root)
            .spawn()
            .unwrap(),
    );
    let e = d.put(&id("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "pid {} (sleep) has its working directory",
            sleeper.0.id()
        )),
        "names the holder: {msg}"
    );
    assert!(
        thinsnap::backend::shared::mounts::is_mount_point(root.parent().unwrap()),
        "still mounted"
    );
    assert_eq!(d.device_set().refs("x"), 1, "still counted");
    drop(sleeper);
    d.put(&id("x")).unwrap();
    // A process with the block device open.
    let (dev, _) = d.device_set().prepare_device("x").unwrap();
    let holder = Killed(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::from(fs::File::open(&dev).unwrap()))
            .spawn()
            .unwrap(),
    );
    let e = d.remove(&id("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("pid {} (sleep) has", holder.0.id())),
        "{e}"
    );
    assert!(d.exists(&id("x")), "a failed remove keeps the layer");
    drop(holder);
    d.remove(&id("x")).unwrap();
    store.assert_consistent();
}

fn loop_file(store: &DmStore, name: &str) -> PathBuf {
    store.root().join("devicemapper/devicemapper").join(name)
}

#[test]
fn loop_files_moved_or_deleted_under_a_running_store() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    write(d, "a", "f", b"committed");
    // Moved: a clear error that says where it went; moving it back heals.
    let data = loop_file(&store, "data");
    let moved = store.root().join("data.moved");
    fs::rename(&data, &moved).unwrap();
    let e = match store.reopen_with(&[]) {
        Ok(_) => panic!("a store whose data file moved must not open"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("data file") && e.contains("data.moved") && e.contains("move it back"),
        "{e}"
    );
    fs::rename(&moved, &data).unwrap();
    let meta = loop_file(&store, "metadata");
    let d = store.reopen();
    assert_eq!(sha(d, "a", "f"), {
        let h = Sha256::digest(b"committed");
        h.iter().map(|x| format!("{x:02x}")).collect::<String>()
    });
    // Deleted: the running store keeps serving what it has; a new start
    // refuses and says how to rescue the contents from the loop device.
    fs::remove_file(&meta).unwrap();
    assert_eq!(
        fs::read(d.get(&id("a"), None).unwrap().join("f")).unwrap(),
        b"committed"
    );
    d.put(&id("a")).unwrap();
    let e = match store.reopen_with(&[]) {
        Ok(_) => panic!("a store whose metadata file is deleted must not open"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("metadata file")
            && e.contains("deleted")
            && e.contains("cp --sparse=always /dev/loop"),
        "{e}"
    );
    let (code, _, err) = cli(&store, &["fsck"]);
    assert_eq!(code, 8, "fsck cannot check it either, and says why: {err}");
    assert!(err.contains("deleted"), "{err}");
    // Release this store's devices and pool by hand (the store cannot
    // open) so nothing leaks; other tests run beside this one.
    let prefix =
        thinsnap::backend::devmapper::deviceset::docker_prefix(&store.root().join("devicemapper"))
            .unwrap();
    let pool = format!("{prefix}-pool");
    let ctl = DmControl::open().unwrap();
    for name in ctl.list().unwrap() {
        if name.starts_with(&format!("{prefix}-")) && name != pool {
            thinsnap::dm::thin::deactivate(&ctl, &name, false).unwrap();
        }
    }
    thinsnap::dm::thin::deactivate(&ctl, &pool, false).unwrap();
    // The store cannot open any more: its drop must not try.
    store.driver = None;
    store.opts = vec!["thinsnap.this_store_is_gone=1".into()];
}

#[test]
fn service_on_devicemapper_recovers_from_kill_at_every_failpoint() {
    common::require_vm();
    let mut opts: Vec<&str> = common::DM_TEST_OPTS.to_vec();
    opts.push("thinsnap.layout=flat");
    common::service::crash_at_failpoints("devicemapper", &opts);
}

#[test]
fn a_filling_metadata_device_refuses_new_snapshots_cleanly_and_extend_brings_it_back() {
    common::require_vm();
    let store = DmStore::new(&[
        "dm.loopmetadatasize=2M",
        "dm.loopdatasize=8G",
        "dm.basesize=512M",
        "dm.fs=ext4",
    ]);
    let d = store.driver();
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    write(d, "img", "keep", b"image data");
    let keep = sha(d, "img", "keep");
    // Every snapshot that gets a block of its own copies a path of the
    // pool's mapping btree: metadata fills long before data does.
    let block = AlignedBuf::new(64 << 10);
    let mut refused = None;
    for k in 0..4000 {
        let layer = format!("l{k}");
        match d.create(&id(&layer), Some(&id("img")), &CreateOpts::default()) {
            Ok(()) => {}
            Err(e) => {
                refused = Some((k, e));
                break;
            }
        }
        let (dev, _) = d.device_set().prepare_device(&layer).unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_o_direct())
            .open(&dev)
            .unwrap();
        use std::os::unix::fs::FileExt;
        for j in 0..4u64 {
            f.write_all_at(block.as_slice(), (100 + j * 37 + k as u64 % 50) << 20)
                .unwrap_or_else(|e| panic!("write into {layer}: {e}"));
        }
        drop(f);
        let name = d.device_set().device_name(&layer);
        thinsnap::dm::thin::deactivate(d.device_set().control(), &name, false).unwrap();
    }
    let (made, e) = refused.expect("the metadata guard refused a snapshot before 4000");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("free metadata blocks") && msg.contains("pool extend --metadata"),
        "says what is short and what to do: {msg}"
    );
    assert!(
        !d.exists(&id(&format!("l{made}"))),
        "the refused layer left nothing"
    );
    store.assert_consistent();
    let (_, status, _) = cli(&store, &["pool", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["pool_mode"], "rw",
        "the guard kept the kernel out of trouble: {status}"
    );
    let (code, out, err) = cli(&store, &["pool", "extend", "--metadata", "+16M"]);
    assert_eq!(code, 0, "{out}{err}");
    d.create(&id("after"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    assert_eq!(sha(d, "img", "keep"), keep);
    store.assert_consistent();
    common::thin_check_clean(store);
}
