//! The devicemapper backend on a real dm-thin pool (inside the test VM):
//! lifecycle, a 100-layer chain, copy-on-write isolation, restarts, base
//! growth, the free-space guard, deferred deletion, busy and parent
//! removal, and start-up with an unreadable device file.

mod common;

use std::fs;
use std::path::Path;

use common::DmStore;
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};
use thinsnap::units::Bytes;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn write(d: &dyn Driver, layer: &str, path: &str, data: &[u8]) {
    let root = d.get(&id(layer), None).unwrap();
    let p = root.join(path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    nix::unistd::syncfs(fs::File::open(&root).unwrap()).unwrap();
    d.put(&id(layer)).unwrap();
}

fn read(d: &dyn Driver, layer: &str, path: &str) -> Option<Vec<u8>> {
    let root = d.get(&id(layer), None).unwrap();
    let data = fs::read(root.join(path)).ok();
    d.put(&id(layer)).unwrap();
    data
}

fn statfs_size(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks() * s.fragment_size()
}

#[test]
fn lifecycle_in_docker_layout_and_format() {
    common::require_vm();
    let store = DmStore::new(&[]);
    let d = store.driver();
    let home = store.root().join("devicemapper");

    // Docker's files: base, deviceset-metadata, transaction-metadata.
    let base: serde_json::Value =
        serde_json::from_slice(&fs::read(home.join("metadata/base")).unwrap()).unwrap();
    assert_eq!(base["initialized"], true);
    assert_eq!(base["size"], 512u64 << 20);
    let ds = fs::read_to_string(home.join("metadata/deviceset-metadata")).unwrap();
    assert!(ds.starts_with("{\"next_device_id\":"), "{ds}");
    assert!(ds.contains("\"BaseDeviceFilesystem\":\"xfs\""), "{ds}");

    d.create(&id("layer1"), None, &CreateOpts::default())
        .unwrap();
    let raw = fs::read_to_string(home.join("metadata/layer1")).unwrap();
    assert!(
        raw.starts_with("{\"device_id\":2,\"size\":536870912,\"transaction_id\":2,\"initialized\":false,\"deleted\":false}"),
        "{raw}"
    );
    assert!(!raw.ends_with('\n'));
    assert_eq!(
        fs::read_to_string(home.join("metadata/transaction-metadata")).unwrap(),
        "{\"open_transaction_id\":2,\"device_hash\":\"layer1\",\"device_id\":2}"
    );

    // get: mnt/<id> holds the fs with an `id` file and rootfs/.
    let root = d.get(&id("layer1"), None).unwrap();
    assert_eq!(root, home.join("mnt/layer1/rootfs"));
    assert_eq!(
        fs::read_to_string(home.join("mnt/layer1/id")).unwrap(),
        "layer1"
    );
    fs::write(root.join("hello"), b"from layer1").unwrap();
    // Reference counting: a second get, one put, still mounted.
    assert_eq!(d.get(&id("layer1"), None).unwrap(), root);
    d.put(&id("layer1")).unwrap();
    assert!(root.join("hello").exists());
    d.put(&id("layer1")).unwrap();
    assert!(
        !home.join("mnt/layer1").exists(),
        "mnt/<id> is removed after the last put"
    );
    assert_eq!(
        read(d, "layer1", "hello").as_deref(),
        Some(&b"from layer1"[..])
    );

    let meta = d.metadata(&id("layer1")).unwrap();
    assert_eq!(meta["DeviceId"], "2");
    assert_eq!(meta["DeviceSize"], "536870912");
    assert_eq!(
        meta["DeviceName"],
        format!("{}-layer1", d.device_set().prefix())
    );

    let status = d.status().unwrap();
    let keys: Vec<&str> = status.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        &keys[..5],
        [
            "Pool Name",
            "Pool Blocksize",
            "Base Device Size",
            "Backing Filesystem",
            "Udev Sync Supported"
        ]
    );
    let get = |k: &str| {
        status
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("Pool Blocksize"), "65.54kB");
    assert_eq!(get("Base Device Size"), "536.9MB");
    assert_eq!(
        get("Data loop file"),
        home.join("devicemapper/data").display().to_string()
    );
    let raw = d.status_json().unwrap();
    assert_eq!(raw["pool_blocksize"], 65536);
    assert!(raw["data_space_used"].as_u64().unwrap() > 0);

    store.assert_consistent();
    d.remove(&id("layer1")).unwrap();
    assert!(!home.join("metadata/layer1").exists());
    assert!(!d.exists(&id("layer1")));
    assert_eq!(
        d.remove(&id("layer1")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    store.assert_consistent();
}

#[test]
fn chain_of_100_layers_reads_from_the_top() {
    common::require_vm();
    let store = DmStore::new(&[]);
    let d = store.driver();
    let mut parent: Option<LayerId> = None;
    for k in 1..=100 {
        let l = id(&format!("chain-{k:03}"));
        d.create(&l, parent.as_ref(), &CreateOpts::default())
            .unwrap();
        write(
            d,
            l.as_str(),
            &format!("files/{k}"),
            format!("content of layer {k}").as_bytes(),
        );
        parent = Some(l);
    }
    let top = parent.unwrap();
    let root = d.get(&top, None).unwrap();
    let mut names: Vec<String> = fs::read_dir(root.join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort_by_key(|n| n.parse::<u32>().unwrap());
    assert_eq!(names.len(), 100);
    for k in 1..=100 {
        assert_eq!(
            fs::read_to_string(root.join(format!("files/{k}"))).unwrap(),
            format!("content of layer {k}")
        );
    }
    d.put(&top).unwrap();
    // Layer 50 sees exactly 50 files: later layers did not leak down.
    let root = d.get(&id("chain-050"), None).unwrap();
    assert_eq!(fs::read_dir(root.join("files")).unwrap().count(), 50);
    d.put(&id("chain-050")).unwrap();
    assert_eq!(d.list().unwrap().len(), 100);
    store.assert_consistent();
}

#[test]
fn siblings_are_isolated_at_block_level() {
    common::require_vm();
    let store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    write(d, "img", "shared.bin", &vec![0x5a; 8 << 20]);
    d.create(&id("a"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    d.create(&id("b"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    write(d, "a", "shared.bin", &vec![0xa1; 8 << 20]);
    write(d, "a", "only-a", b"a");
    write(d, "b", "only-b", b"b");
    assert_eq!(read(d, "img", "shared.bin").unwrap(), vec![0x5a; 8 << 20]);
    assert_eq!(read(d, "b", "shared.bin").unwrap(), vec![0x5a; 8 << 20]);
    assert_eq!(read(d, "a", "shared.bin").unwrap(), vec![0xa1; 8 << 20]);
    assert!(read(d, "b", "only-a").is_none());
    assert!(read(d, "a", "only-b").is_none());
    assert!(read(d, "img", "only-a").is_none());
    // Block accounting: b shares the image's 8 MiB, a owns its rewrite
    // (b's own blocks are only filesystem metadata from its small write).
    let usage = d.device_set().thin_usage().unwrap();
    let dev = |h: &str| d.device_set().device_info(h).unwrap().device_id;
    let bs = d.device_set().block_size().0;
    let a = usage.iter().find(|u| u.id == dev("a")).unwrap();
    let b = usage.iter().find(|u| u.id == dev("b")).unwrap();
    assert!(
        a.exclusive_blocks * bs >= 8 << 20,
        "a owns its rewrite: {a:?}"
    );
    assert!(
        b.exclusive_blocks * bs < 4 << 20,
        "b shares the image: {b:?}"
    );
    assert!(b.shared_blocks * bs >= 8 << 20, "{b:?}");
    assert!(d.usage(&id("a")).unwrap().bytes >= Bytes(8 << 20));
}

#[test]
fn restart_reloads_state_with_and_without_the_pool() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    {
        let d = store.driver();
        d.create(&id("p"), None, &CreateOpts::default()).unwrap();
        write(d, "p", "f", b"persisted");
        d.create(&id("c"), Some(&id("p")), &CreateOpts::default())
            .unwrap();
        d.get(&id("c"), None).unwrap();
    }
    // A process exit: the pool, the device and the mount stay.
    let d = store.reopen();
    let ls = d.list().unwrap();
    assert_eq!(ls.len(), 2);
    let c = ls.iter().find(|l| l.id.as_str() == "c").unwrap();
    assert_eq!(c.parent.as_ref().map(|p| p.as_str()), Some("p"));
    assert_eq!(
        c.mount_count, 1,
        "the mount made before the restart is adopted"
    );
    d.put(&id("c")).unwrap();
    assert_eq!(read(d, "c", "f").as_deref(), Some(&b"persisted"[..]));
    // A clean shutdown: everything released, then opened from the files.
    d.cleanup().unwrap();
    assert!(
        !common::dm_device_names()
            .iter()
            .any(|n| n.starts_with(d.device_set().prefix())),
        "cleanup removed the pool and devices"
    );
    let d = store.reopen();
    assert_eq!(read(d, "c", "f").as_deref(), Some(&b"persisted"[..]));
    store.assert_consistent();
}

#[test]
fn base_grows_with_a_larger_basesize_and_never_shrinks() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    store
        .driver()
        .create(&id("small"), None, &CreateOpts::default())
        .unwrap();
    let err = store
        .reopen_with(&["dm.basesize=256M"])
        .err()
        .expect("shrinking is refused");
    assert!(
        err.to_string()
            .contains("Base device size cannot be smaller than 536.9MB"),
        "{err}"
    );
    let d = store.reopen_with(&["dm.basesize=1G"]).unwrap();
    assert_eq!(d.device_set().base_size(), 1 << 30);
    d.create(&id("big"), None, &CreateOpts::default()).unwrap();
    let root = d.get(&id("big"), None).unwrap();
    assert!(
        statfs_size(&root) > 900 << 20,
        "a snapshot of the grown base has the larger fs"
    );
    d.put(&id("big")).unwrap();
    let root = d.get(&id("small"), None).unwrap();
    assert!(
        statfs_size(&root) < 600 << 20,
        "earlier layers keep their size"
    );
    d.put(&id("small")).unwrap();
    // A per-layer size grows that layer's filesystem; smaller is refused.
    d.create(
        &id("sized"),
        Some(&id("small")),
        &CreateOpts::with_size(Bytes(768 << 20)),
    )
    .unwrap();
    let root = d.get(&id("sized"), None).unwrap();
    assert!(statfs_size(&root) > 700 << 20);
    d.put(&id("sized")).unwrap();
    let e = d
        .create(
            &id("tiny"),
            Some(&id("small")),
            &CreateOpts::with_size(Bytes(64 << 20)),
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Container size cannot be smaller than"),
        "{e}"
    );
    store.assert_consistent();
}

#[test]
fn free_space_guard_refuses_new_snapshots_and_says_what_to_do() {
    common::require_vm();
    let store = DmStore::new(&[
        "dm.loopdatasize=1G",
        "dm.loopmetadatasize=512M",
        "dm.min_free_space=90%",
    ]);
    let d = store.driver();
    d.create(&id("filler"), None, &CreateOpts::default())
        .unwrap();
    write(d, "filler", "big", &vec![7u8; 160 << 20]);
    let e = d
        .create(&id("refused"), None, &CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("free data blocks which is less than minimum required"),
        "{msg}"
    );
    assert!(msg.contains("dm.min_free_space"), "{msg}");
    assert!(!d.exists(&id("refused")));
    store.assert_consistent();
    // Freeing space lets snapshots through again.
    d.remove(&id("filler")).unwrap();
    d.create(&id("accepted"), None, &CreateOpts::default())
        .unwrap();
}

#[test]
fn busy_device_is_deleted_later_with_deferred_deletion() {
    common::require_vm();
    let mut store = DmStore::new(&[
        "dm.use_deferred_removal=true",
        "dm.use_deferred_deletion=true",
    ]);
    let d = store.driver();
    d.create(&id("held"), None, &CreateOpts::default()).unwrap();
    d.get(&id("held"), None).unwrap();
    let name = d.device_set().device_name("held");
    // Someone keeps the block device open (a leaked mount would do the same).
    let holder = fs::File::open(Path::new("/dev/mapper").join(&name)).unwrap();
    d.put(&id("held")).unwrap();
    d.remove(&id("held")).unwrap();
    assert!(
        !d.exists(&id("held")),
        "a deleted-marked layer is gone for users"
    );
    let file: serde_json::Value =
        serde_json::from_slice(&fs::read(store.root().join("devicemapper/metadata/held")).unwrap())
            .unwrap();
    assert_eq!(file["deleted"], true, "marked for deferred deletion");
    assert_eq!(d.device_set().deleted_count(), 1);
    let e = d
        .create(&id("held"), None, &CreateOpts::default())
        .unwrap_err();
    assert!(e.to_string().contains("Deleted=true"), "{e}");
    // Its parent is not held back by a child that is gone for users.
    d.create(&id("parent"), None, &CreateOpts::default())
        .unwrap();
    d.create(&id("child"), Some(&id("parent")), &CreateOpts::default())
        .unwrap();
    d.get(&id("child"), None).unwrap();
    let child_name = d.device_set().device_name("child");
    let child_holder = fs::File::open(Path::new("/dev/mapper").join(&child_name)).unwrap();
    d.put(&id("child")).unwrap();
    d.remove(&id("child")).unwrap();
    assert!(!d.exists(&id("child")));
    d.remove(&id("parent")).unwrap();
    drop(child_holder);
    drop(holder);
    // The kernel finishes the deferred remove; the next retry deletes it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(d.device_set().retry_deferred_deletions(), 2);
    assert!(!store.root().join("devicemapper/metadata/held").exists());
    store.assert_consistent();
    // A restart retries too: nothing left.
    let d = store.reopen();
    assert_eq!(d.device_set().deleted_count(), 0);
}

#[test]
fn remove_refuses_mounted_layers_and_parents() {
    common::require_vm();
    let store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("parent"), None, &CreateOpts::default())
        .unwrap();
    d.create(&id("child"), Some(&id("parent")), &CreateOpts::default())
        .unwrap();
    let e = d.remove(&id("parent")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HasChildren, "{e}");
    assert!(e.to_string().contains("child"), "{e}");
    d.get(&id("child"), None).unwrap();
    let e = d.remove(&id("child")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    d.put(&id("child")).unwrap();
    d.remove(&id("child")).unwrap();
    d.remove(&id("parent")).unwrap();
    assert!(d.list().unwrap().is_empty());
    store.assert_consistent();
}

#[test]
fn one_unreadable_device_file_does_not_stop_the_store() {
    common::require_vm();
    let mut store = DmStore::new(&[]);
    let d = store.driver();
    d.create(&id("good"), None, &CreateOpts::default()).unwrap();
    write(d, "good", "f", b"still served");
    d.create(&id("bad"), None, &CreateOpts::default()).unwrap();
    let meta = store.root().join("devicemapper/metadata");
    fs::write(meta.join("bad"), b"{\"device_id\":").unwrap();
    fs::write(meta.join(".tmp-stray-from-a-crash"), b"half").unwrap();
    let d = store.reopen();
    assert_eq!(read(d, "good", "f").as_deref(), Some(&b"still served"[..]));
    let broken = d.device_set().broken_files();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].hash, "bad");
    let status = d.status().unwrap();
    let unreadable = status
        .iter()
        .find(|(k, _)| k == "Unreadable Metadata Files")
        .unwrap();
    assert!(unreadable.1.ends_with("metadata/bad"), "{unreadable:?}");
    assert!(!d.exists(&id("bad")));
    d.create(&id("after"), None, &CreateOpts::default())
        .unwrap();
}

#[test]
fn layout_is_recorded_and_cannot_change() {
    common::require_vm();
    let mut store = DmStore::new(&["thinsnap.layout=flat"]);
    let d = store.driver();
    d.create(&id("flat1"), None, &CreateOpts::default())
        .unwrap();
    let root = d.get(&id("flat1"), None).unwrap();
    assert_eq!(root, store.root().join("devicemapper/mnt/flat1"));
    assert!(!root.join("rootfs").exists() && !root.join("id").exists());
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "the fs root is the layer root"
    );
    d.put(&id("flat1")).unwrap();
    let spec = d.mounts(&id("flat1"), true).unwrap();
    assert_eq!(spec[0].kind, "xfs");
    assert!(
        spec[0].options.contains(&"nouuid".to_string())
            && spec[0].options.contains(&"ro".to_string())
    );
    assert!(Path::new(&spec[0].source).exists());
    let err = store
        .reopen_with(&["thinsnap.layout=docker"])
        .err()
        .expect("layout change refused");
    assert!(err.to_string().contains("cannot be changed"), "{err}");
    store.reopen();
}
