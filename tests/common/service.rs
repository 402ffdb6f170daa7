//! A `thinsnap serve` child process and the client-side helpers the
//! service tests share (host: every union backend; VM: devicemapper).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::tonic::Code;
use thinsnap::service::client::{BlockingClient, ClientError};
use thinsnap::snapshot::MountSpec;
use thinsnap::snapshot::mountspec::perform;

pub const BIN: &str = env!("CARGO_BIN_EXE_thinsnap");

/// One `thinsnap serve` child process on a temp root; SIGTERM on drop.
pub struct Service {
    pub child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub driver: String,
}

impl Service {
    pub fn start(root: &Path, driver: &str, failpoints: &str) -> Service {
        Service::start_with(root, driver, &[], failpoints)
    }

    /// `start` with storage options (`--storage-opt`).
    pub fn start_with(root: &Path, driver: &str, opts: &[&str], failpoints: &str) -> Service {
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
            .args(opts.iter().flat_map(|o| ["--storage-opt", o]))
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

    pub fn wait_ready(&mut self) {
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

    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(&self.socket).expect("connect")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // ESRCH: it already died (the wait below reports how).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().unwrap()
    }

    /// Waits for a process that a failpoint killed.
    pub fn wait_killed(&mut self) {
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
pub struct Mounted {
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(specs: &[MountSpec]) -> Mounted {
        assert_eq!(specs.len(), 1, "{specs:?}");
        let dir = tempfile::tempdir().unwrap();
        perform(&specs[0], dir.path()).unwrap_or_else(|e| panic!("mount {specs:?}: {e}"));
        Mounted { dir }
    }
    pub fn path(&self) -> &Path {
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

pub fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    r.expect_err("expected an error")
        .code()
        .expect("a gRPC status")
}

/// Prepare on `parent`, let `write` change the tree, commit as `name`.
pub fn layer(c: &mut BlockingClient, name: &str, parent: &str, write: impl FnOnce(&Path)) {
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
pub fn view_tree(c: &mut BlockingClient, parent: &str) -> BTreeMap<String, String> {
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

pub fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
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

pub fn tree(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// kill -9 at every service failpoint, then a restart must repair:
/// the interrupted key is gone or complete, every record has its layer,
/// every service layer has its record.
pub fn crash_at_failpoints(driver: &str, opts: &[&str]) {
    super::require_root();
    for fp in thinsnap::service::snapshots::FAILPOINTS {
        let dir = tempfile::tempdir().unwrap();
        {
            let svc = Service::start_with(dir.path(), driver, opts, "");
            let mut c = svc.client();
            layer(&mut c, "base", "", |p| {
                fs::write(p.join("f"), "base").unwrap()
            });
            c.prepare("victim", "base", &none()).unwrap();
        }
        let mut svc = Service::start_with(dir.path(), driver, opts, &format!("{fp}=kill"));
        let mut c = svc.client();
        let r = if fp.starts_with("service.prepare") {
            c.prepare("new", "base", &none()).map(|_| ())
        } else {
            c.remove("victim")
        };
        if *fp == "service.remove.removed" {
            // The remover deletes the layer after Remove has answered: the
            // call may succeed, and the process dies right after it.
            drop(r);
        } else {
            assert!(r.is_err(), "{fp}: the request must die with the process");
        }
        drop(c);
        svc.wait_killed();
        // Restart without failpoints: repair runs before serving.
        let svc = Service::start_with(dir.path(), driver, opts, "");
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
            storage_opts: opts.iter().map(|o| o.to_string()).collect(),
        })
        .unwrap();
        let left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|l| l.id.to_string())
            .collect();
        assert!(left.is_empty(), "{fp}: layers left behind: {left:?}");
        store.cleanup().unwrap();
    }
}
