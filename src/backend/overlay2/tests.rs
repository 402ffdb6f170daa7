//! overlay2 without mounting: layout, links, lower files, parents,
//! children, refusals, recovery. Mounting tests are host root tests
//! (`tests/host_overlay2_layout.rs`, `tests/host_conformance_overlay2.rs`).

use super::*;
use crate::snapshot::ErrorKind;
use crate::units::Bytes;
use std::os::unix::fs::PermissionsExt;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn open(root: &Path) -> Overlay2Driver {
    Overlay2Driver::open(root, &[]).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn layout_of_a_chain_is_dockers() {
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path());
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    d.create(&id("b"), Some(&id("a")), &CreateOpts::default())
        .unwrap();
    d.create(&id("c"), Some(&id("b")), &CreateOpts::default())
        .unwrap();
    let home = root.path().join("overlay2");
    assert_eq!(mode(&home.join("l")), 0o700);
    let la = fs::read_to_string(home.join("a/link")).unwrap();
    let lb = fs::read_to_string(home.join("b/link")).unwrap();
    assert_eq!(la.len(), 26);
    assert_eq!(
        fs::read_link(home.join("l").join(&la)).unwrap(),
        Path::new("../a/diff")
    );
    let mut a_entries: Vec<_> = fs::read_dir(home.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    a_entries.sort();
    assert_eq!(a_entries, ["diff", "link"], "a layer without parent");
    assert_eq!(
        fs::read_to_string(home.join("b/lower")).unwrap(),
        format!("l/{la}")
    );
    assert_eq!(
        fs::read_to_string(home.join("c/lower")).unwrap(),
        format!("l/{lb}:l/{la}")
    );
    assert_eq!(mode(&home.join("c")), 0o700);
    assert_eq!(mode(&home.join("c/diff")), 0o755);
    assert_eq!(mode(&home.join("c/work")), 0o700);
    assert_eq!(mode(&home.join("c/link")), 0o644);
    assert_eq!(mode(&home.join("c/lower")), 0o644);
    assert_eq!(d.parent(&id("c")).unwrap(), Some(id("b")));
    assert_eq!(d.parent(&id("a")).unwrap(), None);
    let md = d.metadata(&id("c")).unwrap();
    assert_eq!(
        md["LowerDir"],
        format!(
            "{}:{}",
            home.join("b/diff").display(),
            home.join("a/diff").display()
        )
    );
    assert_eq!(md["UpperDir"], home.join("c/diff").display().to_string());
}

#[test]
fn remove_refuses_parents_and_cleans_links() {
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path());
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    d.create(&id("b"), Some(&id("a")), &CreateOpts::default())
        .unwrap();
    let e = d.remove(&id("a")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HasChildren);
    assert!(e.to_string().contains('b'), "{e}");
    d.remove(&id("b")).unwrap();
    d.remove(&id("a")).unwrap();
    let home = root.path().join("overlay2");
    assert_eq!(fs::read_dir(home.join("l")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(home.join(".thinsnap/tmp")).unwrap().count(), 0);
    assert!(d.list().unwrap().is_empty());
}

#[test]
fn refuses_reserved_ids_options_and_unknown_parents() {
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path());
    let e = d
        .create(&id("l"), None, &CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = d
        .create(&id("x"), None, &CreateOpts::with_size(Bytes(1 << 30)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("project quota"), "{e}");
    let e = d
        .create(&id("x"), Some(&id("nope")), &CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!d.exists(&id("x")));
    let e = Overlay2Driver::open(root.path(), &["overlay2.size=10G".into()])
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = Overlay2Driver::open(root.path(), &["dm.basesize=10G".into()])
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("dm.basesize"), "{e}");
}

#[test]
fn depth_is_limited_to_128_lowers() {
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path());
    d.create(&id("l0"), None, &CreateOpts::default()).unwrap();
    for k in 1..=MAX_LOWERS {
        d.create(
            &id(&format!("l{k}")),
            Some(&id(&format!("l{}", k - 1))),
            &CreateOpts::default(),
        )
        .unwrap();
    }
    let top = format!("l{MAX_LOWERS}");
    assert_eq!(d.lowers(&id(&top)).unwrap().len(), MAX_LOWERS);
    let e = d
        .create(&id("over"), Some(&id(&top)), &CreateOpts::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("129 lower layers"), "{e}");
    assert!(e.to_string().contains("at most 128"), "{e}");
    assert!(!d.exists(&id("over")));
    assert_eq!(
        fs::read_dir(root.path().join("overlay2/l"))
            .unwrap()
            .count(),
        MAX_LOWERS + 1,
        "the refused layer left no link"
    );
}

#[test]
fn parentless_get_returns_diff_and_counts() {
    let root = tempfile::tempdir().unwrap();
    let d = open(root.path());
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    let p = d.get(&id("a"), None).unwrap();
    assert_eq!(p, root.path().join("overlay2/a/diff"));
    assert_eq!(d.remove(&id("a")).unwrap_err().kind(), ErrorKind::Busy);
    d.put(&id("a")).unwrap();
    d.remove(&id("a")).unwrap();
    assert_eq!(d.put(&id("a")).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn recovery_removes_leftovers_of_crashes() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("overlay2");
    {
        let d = open(root.path());
        d.create(&id("a"), None, &CreateOpts::default()).unwrap();
        d.set_incomplete(&id("a"), true).unwrap();
    }
    // What a kill -9 between the steps of a create and a remove leaves.
    fs::create_dir_all(home.join(".thinsnap/tmp/create-x-1/diff")).unwrap();
    std::os::unix::fs::symlink("../x/diff", home.join("l/DANGLINGLINKAAAAAAAAAAAAAA")).unwrap();
    fs::write(home.join(".thinsnap/layers/gone"), b"{\"incomplete\":true}").unwrap();
    let d = open(root.path());
    assert_eq!(fs::read_dir(home.join(".thinsnap/tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(home.join("l")).unwrap().count(), 1);
    assert!(!home.join(".thinsnap/layers/gone").exists());
    let listed = d.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].incomplete, "the mark survives a restart");
    assert_eq!(
        d.get(&id("a"), None).unwrap_err().kind(),
        ErrorKind::Incomplete
    );
}
