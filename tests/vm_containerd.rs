//! The real client: Debian's containerd with a `proxy_plugins` stanza
//! pointing at `thinsnap serve`, in the VM, for devicemapper and overlay2.
//! An OCI image built here from the host's static busybox is imported with
//! `ctr images import --snapshotter thinsnap`, a container started with
//! `ctr run --snapshotter thinsnap` writes a file, `ctr snapshots` ls / info
//! / usage / mounts / rm see the service's records, and after restarting
//! both daemons the image, the snapshots and the written file are still
//! there. At the end everything is removed and nothing is left active.
//!
//! The VM's root is a chroot over the initramfs, where pivot_root(2) is not
//! allowed, so containers run with `ctr run --no-pivot`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const THINSNAP: &str = env!("CARGO_BIN_EXE_thinsnap");
const IMAGE: &str = "docker.io/thinsnap/busybox:test";
const BUSYBOX_APPLETS: &[&str] = &["sh", "cat", "echo", "ls", "sleep", "test"];

/// One daemon pair at a time: TCG has two cores and both stacks are heavy.
static SERIAL: Mutex<()> = Mutex::new(());

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    builder.append_data(&mut h, path, data).unwrap();
}

/// An OCI image layout tarball: one uncompressed layer with busybox and a
/// few applet links, named `IMAGE` by the annotation containerd reads.
fn build_image(path: &Path) {
    let busybox = fs::read("/bin/busybox").expect("busybox-static provides /bin/busybox");
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        layer.append_data(&mut h, dir, &[][..]).unwrap();
    }
    append(&mut layer, "bin/busybox", 0o755, &busybox);
    for applet in BUSYBOX_APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE,
                            "org.opencontainers.image.ref.name": "test"},
        }],
    }))
    .unwrap();
    let mut out = tar::Builder::new(Vec::new());
    append(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    append(&mut out, "index.json", 0o644, &index);
    for blob in [&layer, &config, &manifest] {
        let name = format!("blobs/sha256/{}", &digest(blob)[7..]);
        append(&mut out, &name, 0o644, blob);
    }
    fs::write(path, out.into_inner().unwrap()).unwrap();
}

/// `thinsnap serve` and a containerd that knows it as proxy snapshotter
/// `thinsnap`, both under one temp dir. Dropping it stops both (SIGTERM,
/// then SIGKILL) and, for devicemapper, releases the pool.
struct Stack {
    dir: PathBuf,
    driver: &'static str,
    storage_opts: Vec<&'static str>,
    thinsnap: Option<Child>,
    containerd: Option<Child>,
}

impl Stack {
    fn new(dir: &Path, driver: &'static str, storage_opts: &[&'static str]) -> Stack {
        fs::create_dir_all(dir.join("ctd")).unwrap();
        fs::write(
            dir.join("ctd/config.toml"),
            format!(
                r#"version = 2
root = "{d}/ctd/root"
state = "{d}/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/ctd/containerd.sock"
[proxy_plugins]
  [proxy_plugins.thinsnap]
    type = "snapshot"
    address = "{d}/thinsnap.sock"
"#,
                d = dir.display()
            ),
        )
        .unwrap();
        fs::write(dir.join("thinsnap.toml"), "").unwrap();
        let mut s = Stack {
            dir: dir.to_path_buf(),
            driver,
            storage_opts: storage_opts.to_vec(),
            thinsnap: None,
            containerd: None,
        };
        s.start();
        s
    }

    fn root(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn log(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap()
    }

    fn start(&mut self) {
        let mut serve = Command::new(THINSNAP);
        serve
            .args(["serve", "--driver", self.driver, "--log", "info", "--root"])
            .arg(self.root())
            .arg("--socket")
            .arg(self.dir.join("thinsnap.sock"))
            .arg("--config")
            .arg(self.dir.join("thinsnap.toml"));
        for o in &self.storage_opts {
            serve.args(["--storage-opt", o]);
        }
        self.thinsnap = Some(
            serve
                .stdout(Stdio::null())
                .stderr(self.log("thinsnap.log"))
                .spawn()
                .unwrap(),
        );
        self.wait_for(&self.dir.join("thinsnap.sock"), "thinsnap serve");
        self.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(self.dir.join("ctd/config.toml"))
                .stdout(Stdio::null())
                .stderr(self.log("containerd.log"))
                .spawn()
                .unwrap(),
        );
        self.wait_for(&self.dir.join("ctd/containerd.sock"), "containerd");
        // The socket appears before every plugin is loaded.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ctr_output(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd never answered\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_for(&mut self, socket: &Path, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            let exited = [&mut self.thinsnap, &mut self.containerd]
                .into_iter()
                .flatten()
                .find_map(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("{what}: a daemon exited early ({status})\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{what} never listened\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM containerd, then thinsnap; waits for both.
    fn stop(&mut self) {
        for child in [self.containerd.take(), self.thinsnap.take()]
            .into_iter()
            .flatten()
        {
            stop_child(child);
        }
    }

    fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- thinsnap.log\n{}\n--- containerd.log\n{}",
            tail("thinsnap.log"),
            tail("containerd.log")
        )
    }

    fn ctr_output(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("ctd/containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `ctr`; panics with its stderr and both daemons' logs on failure.
    fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn snapshots(&self, args: &[&str]) -> String {
        let mut all = vec!["snapshots", "--snapshotter", "thinsnap"];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// `ctr snapshots ls` as (key, parent, kind) rows.
    fn snapshot_rows(&self) -> Vec<(String, String, String)> {
        self.snapshots(&["ls"])
            .lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                match cols.as_slice() {
                    [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                    [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                    _ => panic!("unexpected ctr snapshots ls line {l:?}"),
                }
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
        // Whatever a failed test left: the store's own cleanup, then the pool.
        let mut cleanup = Command::new(THINSNAP);
        cleanup
            .args(["--driver", self.driver, "--root"])
            .arg(self.root());
        for o in &self.storage_opts {
            cleanup.args(["--storage-opt", o]);
        }
        let _ = cleanup.arg("cleanup").status();
    }
}

fn stop_child(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon pid {pid} ignored SIGTERM for 60 s");
            }
        }
    }
}

/// `mount -t TYPE SOURCE TARGET -o OPTS` as printed by `ctr snapshots mounts`.
fn mount_printed(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"mount"), "{line}");
    common::run_tool("mount", &words[1..]);
}

/// The whole scenario for one backend.
fn containerd_end_to_end(driver: &'static str, storage_opts: &[&'static str]) {
    common::require_vm();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("busybox-oci.tar");
    build_image(&image);
    let mut stack = Stack::new(&tmp.path().join("stack"), driver, storage_opts);

    // Import: containerd unpacks the layer through thinsnap.
    stack.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "thinsnap",
        image.to_str().unwrap(),
    ]);
    assert!(stack.ctr(&["images", "ls", "-q"]).contains(IMAGE));
    let rows = stack.snapshot_rows();
    assert_eq!(rows.len(), 1, "one committed layer: {rows:?}");
    let (layer_key, _, kind) = rows[0].clone();
    assert_eq!(kind, "Committed");
    assert!(layer_key.starts_with("sha256:"), "{layer_key}");

    // A container writes a file into its own snapshot.
    let written = format!("written by a container on {driver}");
    let out = stack.ctr(&[
        "run",
        "--snapshotter",
        "thinsnap",
        "--no-pivot",
        IMAGE,
        "c1",
        "sh",
        "-c",
        &format!("echo '{written}' > /data.txt && cat /data.txt && ls /"),
    ]);
    assert!(out.contains(&written), "container output: {out}");
    assert!(out.contains("busybox") || out.contains("bin"), "{out}");

    let rows = stack.snapshot_rows();
    assert!(
        rows.contains(&("c1".into(), layer_key.clone(), "Active".into())),
        "{rows:?}"
    );
    let info: serde_json::Value = serde_json::from_str(&stack.snapshots(&["info", "c1"])).unwrap();
    assert_eq!(info["Kind"], "Active");
    assert_eq!(info["Parent"], layer_key.as_str());
    let usage = stack.snapshots(&["usage"]);
    let layer_row = usage
        .lines()
        .find(|l| l.starts_with(&layer_key))
        .unwrap_or_else(|| panic!("{usage}"));
    assert!(
        layer_row.contains("MiB"),
        "the busybox layer holds about 2 MiB: {usage}"
    );
    assert!(usage.lines().any(|l| l.starts_with("c1 ")), "{usage}");

    // thinsnap's own CLI sees the same records through the socket.
    let ours = common::run_tool(
        THINSNAP,
        &[
            "snapshots",
            "--socket",
            stack.dir.join("thinsnap.sock").to_str().unwrap(),
            "ls",
        ],
    );
    assert!(ours.contains("c1") && ours.contains(&layer_key), "{ours}");

    // Restart both daemons: the image, the snapshots and the data survive.
    stack.stop();
    assert_nothing_active(&stack);
    stack.start();
    assert!(stack.ctr(&["images", "ls", "-q"]).contains(IMAGE));
    let rows = stack.snapshot_rows();
    assert!(
        rows.contains(&("c1".into(), layer_key.clone(), "Active".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(layer_key.clone(), String::new(), "Committed".into())),
        "{rows:?}"
    );
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let printed = stack.snapshots(&["mounts", mnt.to_str().unwrap(), "c1"]);
    if driver == "devicemapper" {
        assert!(
            printed.contains("-t xfs") && printed.contains("nouuid"),
            "{printed}"
        );
        assert!(printed.contains("/dev/"), "{printed}");
    } else {
        assert!(
            printed.contains("-t overlay") && printed.contains("upperdir="),
            "{printed}"
        );
    }
    mount_printed(printed.trim());
    let data = fs::read_to_string(mnt.join("data.txt"));
    common::run_tool("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(data.unwrap().trim(), written);

    // A second container from the same image after the restart.
    let out = stack.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "thinsnap",
        "--no-pivot",
        IMAGE,
        "c2",
        "sh",
        "-c",
        "test ! -e /data.txt && echo fresh",
    ]);
    assert!(out.contains("fresh"), "{out}");

    // rm: a snapshot prepared by hand, then the container's, then the layer.
    stack.snapshots(&["prepare", "scratch", &layer_key]);
    assert!(stack.snapshot_rows().iter().any(|r| r.0 == "scratch"));
    stack.snapshots(&["rm", "scratch"]);
    let refused = stack.ctr_output(&["snapshots", "--snapshotter", "thinsnap", "rm", &layer_key]);
    assert!(
        !refused.status.success(),
        "a layer with a child (c1) cannot be removed"
    );
    stack.ctr(&["containers", "rm", "c1"]);
    stack.ctr(&["images", "rm", "--sync", IMAGE]);
    let left = stack.snapshot_rows();
    if left.iter().any(|r| r.0 == layer_key) {
        stack.snapshots(&["rm", &layer_key]);
    }
    assert!(
        stack.snapshot_rows().is_empty(),
        "{:?}",
        stack.snapshot_rows()
    );

    stack.stop();
    assert_nothing_active(&stack);
}

/// After a clean shutdown of both daemons with no container running, the
/// service has released every dm device of its store (pool included).
fn assert_nothing_active(stack: &Stack) {
    let ours: Vec<String> = common::dm_device_names()
        .into_iter()
        .filter(|n| n.starts_with("docker-"))
        .collect();
    assert!(
        ours.is_empty(),
        "thinsnap serve's shutdown leaves nothing active: {ours:?}\n{}",
        stack.logs()
    );
}

#[test]
fn containerd_runs_containers_on_thinsnap_devicemapper() {
    containerd_end_to_end("devicemapper", common::DM_TEST_OPTS);
}

#[test]
fn containerd_runs_containers_on_thinsnap_overlay2() {
    containerd_end_to_end("overlay2", &[]);
}
