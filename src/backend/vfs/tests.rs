use super::*;

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

#[test]
fn recovery_removes_leftovers_and_keeps_foreign_layers() {
    let root = tempfile::tempdir().unwrap();
    let d = VfsDriver::open(root.path(), &[]).unwrap();
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    drop(d);
    let home = root.path().join("vfs");
    // A half-built layer, a meta file whose layer is gone, a Docker layer.
    fs::create_dir_all(home.join("tmp/half.123/etc")).unwrap();
    fs::write(
        home.join("meta/ghost"),
        br#"{"parent":null,"incomplete":false}"#,
    )
    .unwrap();
    fs::create_dir_all(home.join("dir/docker-made")).unwrap();
    let d = VfsDriver::open(root.path(), &[]).unwrap();
    assert_eq!(fs::read_dir(home.join("tmp")).unwrap().count(), 0);
    assert!(!home.join("meta/ghost").exists());
    let ids: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(ids, ["base", "docker-made"]);
    assert_eq!(d.parent(&id("docker-made")).unwrap(), None);
}

#[test]
fn refuses_options_it_cannot_honour() {
    let root = tempfile::tempdir().unwrap();
    let e = VfsDriver::open(root.path(), &["vfs.quota=1G".into()])
        .err()
        .unwrap();
    assert!(e.to_string().contains("vfs.quota"), "{e}");
    let d = VfsDriver::open(root.path(), &[]).unwrap();
    let e = d
        .create(&id("x"), None, &CreateOpts::with_size(Bytes(1 << 30)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(!d.exists(&id("x")));
}

#[test]
fn corrupt_meta_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let d = VfsDriver::open(root.path(), &[]).unwrap();
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    fs::write(root.path().join("vfs/meta/a"), b"{garbage").unwrap();
    let e = d.parent(&id("a")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("vfs/meta/a"), "{e}");
}

#[test]
fn concurrent_creates_and_removes_stay_consistent() {
    let root = tempfile::tempdir().unwrap();
    let d = std::sync::Arc::new(VfsDriver::open(root.path(), &[]).unwrap());
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    fs::write(d.layer_dir(&id("base")).join("f"), vec![3u8; 1 << 20]).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                let kid = id(&format!("kid{i}"));
                d.create(&kid, Some(&id("base")), &CreateOpts::default())
                    .unwrap();
                // Removing the parent while children exist or are being
                // copied from it is refused, never half-done.
                let e = d.remove(&id("base")).unwrap_err();
                assert!(
                    matches!(e.kind(), ErrorKind::HasChildren | ErrorKind::Busy),
                    "{e}"
                );
                d.remove(&kid).unwrap();
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(d.list().unwrap().len(), 1);
    assert_eq!(
        fs::read_dir(root.path().join("vfs/tmp")).unwrap().count(),
        0
    );
    d.remove(&id("base")).unwrap();
    assert!(d.list().unwrap().is_empty());
}

#[test]
fn mounts_describe_a_bind_of_the_layer_dir() {
    let root = tempfile::tempdir().unwrap();
    let d = VfsDriver::open(root.path(), &[]).unwrap();
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    let rw = d.mounts(&id("base"), false).unwrap();
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0].kind, "bind");
    assert_eq!(rw[0].source, d.layer_dir(&id("base")).display().to_string());
    assert_eq!(rw[0].options, ["rbind", "rw"]);
    assert_eq!(
        d.mounts(&id("base"), true).unwrap()[0].options,
        ["rbind", "ro"]
    );
    assert_eq!(
        d.mounts(&id("missing"), false).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    d.set_incomplete(&id("base"), true).unwrap();
    assert_eq!(
        d.mounts(&id("base"), false).unwrap_err().kind(),
        ErrorKind::Incomplete
    );
}
