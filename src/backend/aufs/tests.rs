//! aufs without the aufs module (as on every mainline kernel): layout,
//! layers files, native diff/apply/changes on diff dirs, the clear refusal
//! to mount layers with parents, recovery.

use super::*;
use crate::snapshot::ErrorKind;
use std::os::unix::fs::PermissionsExt;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

use crate::backend::shared::test_tar as tar_with;

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn store() -> (tempfile::TempDir, AufsDriver) {
    let root = tempfile::tempdir().unwrap();
    let mut d = AufsDriver::open(root.path(), &[]).unwrap();
    // As on mainline kernels, whatever this host has.
    d.kernel_aufs = false;
    (root, d)
}

#[test]
fn layout_matches_seed_000_including_init_layers() {
    let (root, d) = store();
    let home = root.path().join("aufs");
    let o = CreateOpts::default();
    d.create(&id("l1"), None, &o).unwrap();
    d.create(&id("l2"), Some(&id("l1")), &o).unwrap();
    d.create(&id("l3"), Some(&id("l2")), &o).unwrap();
    d.create_read_write(&id("ctr-init"), Some(&id("l3")), &o)
        .unwrap();
    d.create_read_write(&id("ctr"), Some(&id("ctr-init")), &o)
        .unwrap();
    for sub in ["diff", "layers", "mnt"] {
        assert_eq!(mode(&home.join(sub)), 0o700, "{sub}");
    }
    assert_eq!(fs::read_to_string(home.join("layers/l1")).unwrap(), "");
    assert_eq!(
        fs::read_to_string(home.join("layers/l3")).unwrap(),
        "l2\nl1\n"
    );
    assert_eq!(
        fs::read_to_string(home.join("layers/ctr-init")).unwrap(),
        "l3\nl2\nl1\n"
    );
    assert_eq!(
        fs::read_to_string(home.join("layers/ctr")).unwrap(),
        "ctr-init\nl3\nl2\nl1\n"
    );
    assert_eq!(mode(&home.join("layers/ctr")), 0o644);
    assert_eq!(mode(&home.join("diff/ctr")), 0o755);
    assert_eq!(mode(&home.join("mnt/ctr")), 0o755);
    assert_eq!(d.parent(&id("ctr")).unwrap(), Some(id("ctr-init")));
    assert_eq!(
        d.remove(&id("l3")).unwrap_err().kind(),
        ErrorKind::HasChildren
    );
}

#[test]
fn layers_with_parents_are_refused_clearly_the_rest_works() {
    let (root, d) = store();
    let o = CreateOpts::default();
    d.create(&id("base"), None, &o).unwrap();
    d.apply_diff(
        &id("base"),
        None,
        &mut &tar_with(&[("etc/keep", b"k"), ("etc/gone", b"g")])[..],
    )
    .unwrap();
    let path = d.get(&id("base"), None).unwrap();
    assert_eq!(path, root.path().join("aufs/diff/base"));
    assert_eq!(fs::read(path.join("etc/keep")).unwrap(), b"k");
    d.put(&id("base")).unwrap();

    d.create(&id("child"), Some(&id("base")), &o).unwrap();
    let top = tar_with(&[("etc/.wh.gone", b""), ("etc/new", b"new")]);
    d.apply_diff(&id("child"), Some(&id("base")), &mut &top[..])
        .unwrap();
    assert!(
        root.path().join("aufs/diff/child/etc/.wh.gone").is_file(),
        "aufs keeps whiteouts as files"
    );
    let changes: Vec<String> = d
        .changes(&id("child"), None)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect();
    assert_eq!(changes, ["C /etc", "D /etc/gone", "A /etc/new"]);
    assert_eq!(d.diff_size(&id("child"), None).unwrap(), 3);
    let mut out = Vec::new();
    d.diff(&id("child"), None, &mut out).unwrap();
    let names: Vec<String> = tar::Archive::new(&out[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"etc/.wh.gone".to_string()), "{names:?}");

    let e = d.get(&id("child"), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let msg = e.to_string();
    assert!(
        msg.contains("/proc/filesystems") && msg.contains("aufs"),
        "{msg}"
    );
    assert_eq!(
        d.mounts(&id("child"), false).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(
        d.mounts(&id("base"), true).unwrap()[0].options,
        ["rbind", "ro"]
    );
    assert!(d.list().unwrap().iter().all(|l| l.mount_count == 0));
}

#[test]
fn recovery_finishes_interrupted_creates_and_removes() {
    let (root, d) = store();
    let home = root.path().join("aufs");
    let o = CreateOpts::default();
    d.create(&id("kept"), None, &o).unwrap();
    d.create(&id("doomed"), None, &o).unwrap();
    fs::write(home.join("diff/doomed/data"), b"x").unwrap();
    // A remove killed after moving layers/doomed away.
    let rm = d.sidecar.tmp_path("remove", &id("doomed"));
    fs::create_dir(&rm).unwrap();
    fs::rename(home.join("layers/doomed"), rm.join("layers")).unwrap();
    // A create killed before its commit.
    let cr = d.sidecar.tmp_path("create", &id("half"));
    fs::create_dir_all(cr.join("layers")).unwrap();
    fs::create_dir(home.join("diff/half")).unwrap();
    fs::create_dir(home.join("mnt/half")).unwrap();
    // Someone else's directory without a layers file stays.
    fs::create_dir(home.join("diff/foreign")).unwrap();
    fs::write(home.join("diff/foreign/f"), b"f").unwrap();
    drop(d);
    let d = AufsDriver::open(root.path(), &[]).unwrap();
    let ids: Vec<String> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["kept"]);
    for gone in ["diff/doomed", "mnt/doomed", "diff/half", "mnt/half"] {
        assert!(!home.join(gone).exists(), "{gone}");
    }
    assert!(home.join("diff/foreign/f").exists());
    assert_eq!(fs::read_dir(home.join(".thinsnap/tmp")).unwrap().count(), 0);
    let e = d.create(&id("foreign"), None, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("move it away"), "{e}");
}
