//! overlay2 on xfs, in the VM (the host kernel has no xfs V4 support, so an
//! xfs without d_type can only be made and mounted there): a root on
//! `mkfs.xfs -m crc=0 -n ftype=0` is refused with the reason, a root on a
//! default xfs (ftype=1) works end to end.

mod common;

use std::fs;

use thinsnap::backend::overlay2::Overlay2Driver;
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

#[test]
fn xfs_without_ftype_is_refused_with_the_reason() {
    common::require_vm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    let _xfs = common::LoopFs::new(
        &["mkfs.xfs", "-q", "-f", "-m", "crc=0", "-n", "ftype=0"],
        300,
        &root,
    );
    assert!(!thinsnap::probe::supports_d_type(&root).unwrap());
    let err = Overlay2Driver::open(&root, &[]).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("xfs") && msg.contains("d_type"), "{msg}");
    assert!(msg.contains("mkfs.xfs -n ftype=1"), "{msg}");
    assert!(
        !root.join("overlay2/l").exists(),
        "nothing is set up on a refused root"
    );
}

#[test]
fn xfs_with_ftype_works() {
    common::require_vm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    let _xfs = common::LoopFs::new(&["mkfs.xfs", "-q", "-f"], 300, &root);
    let d = Overlay2Driver::open(&root, &[]).unwrap();
    let status: std::collections::BTreeMap<_, _> = d.status().unwrap().into_iter().collect();
    assert_eq!(status["Backing Filesystem"], "xfs");
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    fs::write(root.join("overlay2/base/diff/f"), b"base").unwrap();
    d.create(&id("top"), Some(&id("base")), &CreateOpts::default())
        .unwrap();
    let merged = d.get(&id("top"), None).unwrap();
    fs::remove_file(merged.join("f")).unwrap();
    fs::write(merged.join("g"), b"top").unwrap();
    d.put(&id("top")).unwrap();
    let changes: Vec<String> = d
        .changes(&id("top"), None)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect();
    assert_eq!(changes, ["D /f", "A /g"]);
    d.cleanup().unwrap();
}
