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

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::tonic::Code;
use thinsnap::service::client::{BlockingClient, ClientError};
use thinsnap::service::model::Kind;
use thinsnap::snapshot::MountSpec;
use thinsnap::snapshot::mountspec::perform;

const BIN: &str = env!("CARGO_BIN_EXE_thinsnap");

/// One `thinsnap serve` child process on a temp root; SIGTERM on drop.
struct Service {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    driver: String,
}

impl Service {
    fn start(root: &Path, driver: &str, failpoints: &str) -> Service {
        let socket = root.join("run/thinsnap.sock");
        // An empty config file, so a host's /etc/thinsnap/config.toml never leaks in.
        let config = root.join("config.toml");
        fs::write(&config, "").unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--driver", driver, "--log", "info", "--root"])
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env("THINSNAP_FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn thinsnap serve");
        let mut s = Service {
            child: Some(child),
            root: root.to_path_buf(),
            socket,
            driver: driver.to_string(),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("thinsnap serve exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("thinsnap serve did not listen on {}", self.socket.display());
    }

    fn client(&self) -> BlockingClient {
        BlockingClient::connect(&self.socket).expect("connect")
    }

    /// SIGTERM and wait; returns the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // ESRCH: it already died (the wait below reports how).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap()
    }

    /// Waits for a process that a failpoint killed.
    fn wait_killed(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "expected SIGKILL, got {status}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// A mount made from the service's specs (as containerd would), undone on drop.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(specs: &[MountSpec]) -> Mounted {
        assert_eq!(specs.len(), 1, "{specs:?}");
        let dir = tempfile::tempdir().unwrap();
        perform(&specs[0], dir.path()).unwrap_or_else(|e| panic!("mount {specs:?}: {e}"));
        Mounted { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::empty()) {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
            if !std::thread::panicking() {
                panic!("umount {}: {e}", self.dir.path().display());
            }
        }
    }
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    r.expect_err("expected an error")
        .code()
        .expect("a gRPC status")
}

/// Prepare on `parent`, let `write` change the tree, commit as `name`.
fn layer(c: &mut BlockingClient, name: &str, parent: &str, write: impl FnOnce(&Path)) {
    let key = format!("default/prep/{name}");
    let m = c.prepare(&key, parent, &none()).unwrap();
    {
        let mnt = Mounted::new(&m);
        write(mnt.path());
    }
    c.commit(name, &key, &none()).unwrap();
}

/// Reads the whole tree of a view of `parent` as (path → contents or
/// `<dir>`), so checks compare data, not exit codes.
fn view_tree(c: &mut BlockingClient, parent: &str) -> BTreeMap<String, String> {
    let key = format!("default/view/{parent}/{}", uuid::Uuid::new_v4());
    let m = c.view(&key, parent, &none()).unwrap();
    let tree = {
        let mnt = Mounted::new(&m);
        let mut out = BTreeMap::new();
        walk(mnt.path(), mnt.path(), &mut out);
        out
    };
    c.remove(&key).unwrap();
    tree
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.insert(rel, "<dir>".into());
            walk(root, &e.path(), out);
        } else if ft.is_file() {
            out.insert(rel, fs::read_to_string(e.path()).unwrap());
        } else {
            out.insert(rel, "<other>".into());
        }
    }
}

fn tree(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

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

/// kill -9 at every service failpoint, then a restart must repair:
/// the interrupted key is gone or complete, every record has its layer,
/// every service layer has its record.
fn crash_at_failpoints(driver: &str) {
    common::require_root();
    for fp in thinsnap::service::snapshots::FAILPOINTS {
        let dir = tempfile::tempdir().unwrap();
        {
            let svc = Service::start(dir.path(), driver, "");
            let mut c = svc.client();
            layer(&mut c, "base", "", |p| {
                fs::write(p.join("f"), "base").unwrap()
            });
            c.prepare("victim", "base", &none()).unwrap();
        }
        let mut svc = Service::start(dir.path(), driver, &format!("{fp}=kill"));
        let mut c = svc.client();
        let r = if fp.starts_with("service.prepare") {
            c.prepare("new", "base", &none()).map(|_| ())
        } else {
            c.remove("victim")
        };
        assert!(r.is_err(), "{fp}: the request must die with the process");
        drop(c);
        svc.wait_killed();
        // Restart without failpoints: repair runs before serving.
        let svc = Service::start(dir.path(), driver, "");
        let mut c = svc.client();
        let names: Vec<String> = c.walk(&[]).unwrap().into_iter().map(|i| i.name).collect();
        if fp.starts_with("service.prepare") {
            assert_eq!(names, ["base", "victim"], "{fp}");
            // The key is free again and the parent has no phantom child.
            c.prepare("new", "base", &none()).unwrap();
            c.remove("new").unwrap();
        } else {
            assert_eq!(names, ["base"], "{fp}");
        }
        c.remove("victim").ok();
        assert_eq!(view_tree(&mut c, "base")["f"], "base", "{fp}");
        c.remove("base").unwrap();
        drop(c);
        drop(svc);
        // Nothing left: no layer without a record.
        let store = thinsnap::backend::open(&thinsnap::backend::StoreConfig {
            root: dir.path().to_path_buf(),
            driver: driver.to_string(),
            storage_opts: vec![],
        })
        .unwrap();
        let left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|l| l.id.to_string())
            .collect();
        assert!(left.is_empty(), "{fp}: layers left behind: {left:?}");
    }
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
    crash_at_failpoints("vfs");
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
