//! `thinsnap serve` on the host, over a real unix socket, with real
//! backends: containerd's snapshotter test-suite cases (Basic, Stat,
//! Transitivity, PrepareView same key, Update, Remove + key reuse, Walk,
//! RemoveDirectoryInLowerLayer, DeletedFilesInChildSnapshot,
//! MoveFileFromLowerLayer, ViewReadonly, RootPermission, 128LayersMount),
//! performed with the mounts the service returns, mounted the way
//! containerd mounts them. Plus the process-level guarantees: socket mode,
//! one instance per root, stale socket, SIGTERM, and kill -9 at every
//! service failpoint followed by a repairing restart.

mod common;

use common::service::*;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_snapshots::tonic::Code;
use thinsnap::service::client::BlockingClient;
use thinsnap::service::model::Kind;

/// The containerd suite cases, on one running service.
fn suite(driver: &str) {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), driver, "");
    let mut c = svc.client();

    // Basic + StatActive + StatCommitted + RootPermission.
    let m = c.prepare("default/1/base", "", &none()).unwrap();
    {
        let mnt = Mounted::new(&m);
        let mode = fs::metadata(mnt.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "root of a new snapshot");
        fs::create_dir(mnt.path().join("a")).unwrap();
        fs::write(mnt.path().join("a/f"), "base-f").unwrap();
        fs::write(mnt.path().join("top"), "base-top").unwrap();
    }
    let st = c.stat("default/1/base").unwrap();
    assert_eq!((st.kind, st.parent.clone()), (Kind::Active, None));
    c.commit("base", "default/1/base", &none()).unwrap();
    assert_eq!(code(c.stat("default/1/base")), Code::NotFound);
    let st = c.stat("base").unwrap();
    assert_eq!(st.kind, Kind::Committed);
    assert_eq!(
        view_tree(&mut c, "base"),
        tree(&[("a", "<dir>"), ("a/f", "base-f"), ("top", "base-top")])
    );

    // ViewReadonly: a write through a View fails with EROFS.
    let v = c.view("default/2/view", "base", &none()).unwrap();
    {
        let mnt = Mounted::new(&v);
        let e = fs::write(mnt.path().join("new"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let e = fs::remove_file(mnt.path().join("top")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        assert_eq!(
            fs::read_to_string(mnt.path().join("a/f")).unwrap(),
            "base-f"
        );
    }
    // Mounts recovers the same mounts; a committed snapshot has none.
    assert_eq!(c.mounts("default/2/view").unwrap(), v);
    assert_eq!(code(c.mounts("base")), Code::FailedPrecondition);
    // PrepareView same key fails, either way round.
    assert_eq!(
        code(c.prepare("default/2/view", "base", &none())),
        Code::AlreadyExists
    );
    assert_eq!(
        code(c.view("default/2/view", "base", &none())),
        Code::AlreadyExists
    );
    // A parent with children cannot be removed; commit of a view fails.
    assert_eq!(code(c.remove("base")), Code::FailedPrecondition);
    assert_eq!(
        code(c.commit("x", "default/2/view", &none())),
        Code::FailedPrecondition
    );
    c.remove("default/2/view").unwrap();

    // Transitivity + DeletedFilesInChildSnapshot + RemoveDirectoryInLowerLayer
    // + MoveFileFromLowerLayer.
    layer(&mut c, "l2", "base", |p| {
        fs::remove_file(p.join("top")).unwrap();
        fs::write(p.join("l2"), "two").unwrap();
    });
    layer(&mut c, "l3", "l2", |p| {
        fs::rename(p.join("a/f"), p.join("moved")).unwrap();
        fs::remove_dir(p.join("a")).unwrap();
        fs::write(p.join("l3"), "three").unwrap();
    });
    assert_eq!(
        view_tree(&mut c, "l3"),
        tree(&[("l2", "two"), ("l3", "three"), ("moved", "base-f")])
    );
    assert_eq!(
        view_tree(&mut c, "l2"),
        tree(&[("a", "<dir>"), ("a/f", "base-f"), ("l2", "two")])
    );
    assert_eq!(c.stat("l3").unwrap().parent.as_deref(), Some("l2"));

    // Usage: a 1 MiB file shows up in the active snapshot's own usage.
    let m = c.prepare("default/3/big", "l3", &none()).unwrap();
    let before = c.usage("default/3/big").unwrap();
    {
        let mnt = Mounted::new(&m);
        fs::write(mnt.path().join("big"), vec![7u8; 1 << 20]).unwrap();
    }
    let after = c.usage("default/3/big").unwrap();
    assert!(
        after.size >= before.size + (1 << 20),
        "usage {before:?} -> {after:?}"
    );
    assert!(
        after.inodes > before.inodes,
        "usage {before:?} -> {after:?}"
    );

    // Update: labels only, times move.
    let mut info = c.stat("l3").unwrap();
    info.labels
        .insert("containerd.io/gc.root".into(), "yes".into());
    let upd = c.update(&info, &["labels.containerd.io/gc.root"]).unwrap();
    assert_eq!(upd.labels["containerd.io/gc.root"], "yes");
    assert!(upd.updated > info.updated);
    assert_eq!(code(c.update(&info, &["kind"])), Code::InvalidArgument);

    // Walk with filters.
    let names = |c: &mut BlockingClient, f: &[&str]| -> Vec<String> {
        c.walk(f).unwrap().into_iter().map(|i| i.name).collect()
    };
    assert_eq!(names(&mut c, &["kind==committed"]), ["base", "l2", "l3"]);
    assert_eq!(names(&mut c, &["kind==active"]), ["default/3/big"]);
    assert_eq!(names(&mut c, &["parent==l2"]), ["l3"]);
    assert_eq!(names(&mut c, &["labels.\"containerd.io/gc.root\""]), ["l3"]);
    assert_eq!(
        names(&mut c, &["parent==l3", "name~=^l[2]$"]),
        ["default/3/big", "l2"]
    );

    // Remove + key reuse + recommit of a name.
    c.remove("default/3/big").unwrap();
    c.prepare("default/3/big", "l3", &none()).unwrap();
    c.remove("default/3/big").unwrap();
    c.remove("l3").unwrap();
    layer(&mut c, "l3", "l2", |p| {
        fs::write(p.join("again"), "yes").unwrap()
    });
    assert_eq!(view_tree(&mut c, "l3")["again"], "yes");

    // The CLI reads through the socket while the service owns the store.
    let out = Command::new(BIN)
        .args(["snapshots", "--socket"])
        .arg(&svc.socket)
        .args(["ls", "--filter", "kind==committed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["base", "l2", "l3"] {
        assert!(listing.lines().any(|l| l.starts_with(name)), "{listing}");
    }
    let out = Command::new(BIN)
        .args(["--root"])
        .arg(&svc.root)
        .args(["snapshots", "usage", "l2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("l2"));

    for k in ["l3", "l2", "base"] {
        c.remove(k).unwrap();
    }
    assert!(c.walk(&[]).unwrap().is_empty());
    drop(c);
    let mut svc = svc;
    assert!(svc.stop().success());
    assert_eq!(svc.driver, driver);
}

/// 128 stacked layers, each adding one file, equal one flat tree.
fn many_layers(driver: &str, depth: usize) {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(dir.path(), driver, "");
    let mut c = svc.client();
    let mut parent = String::new();
    for i in 0..depth {
        let name = format!("layer-{i:03}");
        layer(&mut c, &name, &parent, |p| {
            fs::write(p.join(format!("f{i:03}")), format!("{i}")).unwrap()
        });
        parent = name;
    }
    let got = view_tree(&mut c, &parent);
    let want: BTreeMap<String, String> = (0..depth)
        .map(|i| (format!("f{i:03}"), format!("{i}")))
        .collect();
    assert_eq!(got, want);
}

/// Socket mode, one instance per root, stale socket after kill -9, SIGTERM.
fn process_guarantees(driver: &str) {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Service::start(dir.path(), driver, "");
    let mode = fs::metadata(&svc.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fs::metadata(&svc.socket).unwrap().uid(), 0);
    // A second instance on the same root is refused and says why.
    let out = Command::new(BIN)
        .args(["serve", "--driver", driver, "--root"])
        .arg(dir.path())
        .args(["--socket"])
        .arg(dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serves"), "{err}");
    // kill -9 leaves the socket file; the next start replaces it.
    let mut child = svc.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(svc.socket.exists());
    let mut svc = Service::start(dir.path(), driver, "");
    let mut c = svc.client();
    c.prepare("k", "", &none()).unwrap();
    drop(c);
    // SIGTERM: exit 0, socket gone, state kept.
    assert!(svc.stop().success());
    assert!(!svc.socket.exists());
    let svc = Service::start(dir.path(), driver, "");
    assert_eq!(svc.client().stat("k").unwrap().kind, Kind::Active);
}

#[test]
fn vfs_containerd_suite() {
    suite("vfs");
}

#[test]
fn vfs_many_layers() {
    many_layers("vfs", 32);
}

#[test]
fn vfs_process_guarantees() {
    process_guarantees("vfs");
}

#[test]
fn vfs_crash_at_every_failpoint() {
    crash_at_failpoints("vfs", &[]);
}

#[test]
fn overlay2_containerd_suite() {
    suite("overlay2");
}

#[test]
fn overlay2_process_guarantees() {
    process_guarantees("overlay2");
}

/// While the service holds a store, `status` and `ls` answer from what it
/// publishes, commands that would change the store are refused with the
/// reason, and after the service stops they open the store again.
#[test]
fn cli_reads_while_serving_and_refuses_changes() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Service::start(dir.path(), "vfs", "");
    let mut c = svc.client();
    layer(&mut c, "base", "", |p| fs::write(p.join("f"), "x").unwrap());
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(["--driver", "vfs", "--root"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    // The publisher runs every 2 s; the committed layer shows up soon.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listing = loop {
        let out = cli(&["ls", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if rows.as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listing.as_array().unwrap().len(), 1, "{listing}");
    let out = cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("served by thinsnap serve"),
        "{text}"
    );
    assert!(text.contains("Storage Driver: vfs"), "{text}");
    for change in [&["create", "x"][..], &["cleanup"], &["rm", "x"]] {
        let out = cli(change);
        assert!(!out.status.success(), "{change:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("served by thinsnap serve (pid"),
            "{change:?}: {err}"
        );
    }
    assert!(svc.stop().success());
    let out = cli(&["ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("served by"),
        "{text}"
    );
    assert!(!dir.path().join("service/status.json").exists());
}
