//! overlay (v1) without mounting: layout, flattened chains, the hardlinked
//! apply, parents and recovery. Mounting: `tests/host_conformance_overlay.rs`
//! and `tests/host_union_layouts.rs`.

use super::*;
use crate::snapshot::ErrorKind;
use std::os::unix::fs::MetadataExt;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

use crate::backend::shared::test_tar as tar_with;

fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn layout_and_flattened_chains() {
    let root = tempfile::tempdir().unwrap();
    let d = OverlayDriver::open(root.path(), &[]).unwrap();
    let home = root.path().join("overlay");
    d.create(&id("img"), None, &CreateOpts::default()).unwrap();
    d.create(&id("c1"), Some(&id("img")), &CreateOpts::default())
        .unwrap();
    fs::write(home.join("c1/upper/changed"), b"c1").unwrap();
    d.create(&id("c2"), Some(&id("c1")), &CreateOpts::default())
        .unwrap();
    assert_eq!(entries(&home.join("img")), ["root"]);
    assert_eq!(
        entries(&home.join("c1")),
        ["lower-id", "merged", "upper", "work"]
    );
    assert_eq!(fs::read_to_string(home.join("c1/lower-id")).unwrap(), "img");
    let mode = |p: &str| fs::symlink_metadata(home.join(p)).unwrap().mode() & 0o7777;
    for (path, want) in [
        ("img", 0o700),
        ("img/root", 0o755),
        ("c1", 0o700),
        ("c1/upper", 0o755),
        ("c1/work", 0o700),
        ("c1/merged", 0o700),
        ("c1/lower-id", 0o644),
    ] {
        assert_eq!(mode(path), want, "{path}");
    }
    // c2 copies c1's upper and keeps the same single lower.
    assert_eq!(fs::read_to_string(home.join("c2/lower-id")).unwrap(), "img");
    assert_eq!(fs::read(home.join("c2/upper/changed")).unwrap(), b"c1");
    assert_ne!(
        fs::metadata(home.join("c2/upper/changed")).unwrap().ino(),
        fs::metadata(home.join("c1/upper/changed")).unwrap().ino(),
        "a copy, not a link"
    );
    assert_eq!(d.parent(&id("c2")).unwrap(), Some(id("c1")));
    assert_eq!(
        d.remove(&id("c1")).unwrap_err().kind(),
        ErrorKind::HasChildren
    );
    let md = d.metadata(&id("c2")).unwrap();
    assert_eq!(md["LowerDir"], home.join("img/root").display().to_string());
    assert_eq!(
        d.metadata(&id("img")).unwrap()["RootDir"],
        home.join("img/root").display().to_string()
    );
}

#[test]
fn apply_on_a_root_parent_hardlinks_the_parent() {
    let root = tempfile::tempdir().unwrap();
    let d = OverlayDriver::open(root.path(), &[]).unwrap();
    let home = root.path().join("overlay");
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    let base = tar_with(&[("keep", b"keep"), ("replace", b"old")]);
    d.apply_diff(&id("base"), None, &mut &base[..]).unwrap();
    d.create(&id("top"), Some(&id("base")), &CreateOpts::default())
        .unwrap();
    let top = tar_with(&[("replace", b"new"), ("added", b"added")]);
    d.apply_diff(&id("top"), Some(&id("base")), &mut &top[..])
        .unwrap();
    assert_eq!(
        entries(&home.join("top")),
        ["root"],
        "upper/work/merged/lower-id are gone"
    );
    let ino = |p: &str| fs::metadata(home.join(p)).unwrap().ino();
    assert_eq!(ino("top/root/keep"), ino("base/root/keep"), "shared inode");
    assert_ne!(ino("top/root/replace"), ino("base/root/replace"));
    assert_eq!(fs::read(home.join("base/root/replace")).unwrap(), b"old");
    assert_eq!(fs::read(home.join("top/root/replace")).unwrap(), b"new");
    assert_eq!(d.parent(&id("top")).unwrap(), Some(id("base")), "recorded");
    assert!(!d.list().unwrap().iter().any(|l| l.incomplete));
    assert_eq!(fs::read_dir(home.join(".thinsnap/tmp")).unwrap().count(), 0);
}

#[test]
fn a_docker_store_without_records_falls_back_to_lower_id() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("overlay");
    fs::create_dir_all(home.join("img/root")).unwrap();
    for d in ["upper", "work", "merged"] {
        fs::create_dir_all(home.join("ctr").join(d)).unwrap();
    }
    fs::write(home.join("ctr/lower-id"), "img").unwrap();
    let d = OverlayDriver::open(root.path(), &[]).unwrap();
    let listed: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| (l.id.to_string(), l.parent.map(|p| p.to_string())))
        .collect();
    assert_eq!(
        listed,
        [("ctr".into(), Some("img".into())), ("img".into(), None)]
    );
    fs::write(home.join("ctr/lower-id"), "../etc").unwrap();
    let e = d.parent(&id("ctr")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}
