//! Docker 20.10 (Debian's `docker.io`, the last release with the
//! devicemapper graph driver) driven through its HTTP API on a unix socket:
//! a daemon on a temp root, a minimal HTTP/1.1 client, and images in
//! `docker save` format built from in-memory layers. Used by the interop
//! VM test and by the benchmark (`benches/` includes this file).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub type Res<T> = Result<T, String>;

/// One `dockerd` with the devicemapper driver on `root`; SIGTERM on drop.
pub struct Dockerd {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with `--storage-driver devicemapper` and `opts`
    /// (`dm.*`), no networking set-up, and waits until `/_ping` answers.
    /// The VM has no udev: `dm.override_udev_sync_check=true` is added.
    pub fn start(root: &Path, opts: &[&str]) -> Res<Dockerd> {
        std::fs::create_dir_all(root).map_err(|e| e.to_string())?;
        let socket = root.with_extension("sock");
        let log = root.with_extension("log");
        let _ = std::fs::remove_file(&socket);
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(root)
            .arg("--exec-root")
            .arg(root.with_extension("exec"))
            .arg("--pidfile")
            .arg(root.with_extension("pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--storage-driver", "devicemapper"])
            .args(["--storage-opt", "dm.override_udev_sync_check=true"])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-forward=false",
                "--ip-masq=false",
            ]);
        for o in opts {
            cmd.args(["--storage-opt", o]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("starting dockerd (apt-get install docker.io): {e}"))?;
        let mut d = Dockerd {
            child: Some(child),
            root: root.to_path_buf(),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = request(&d.socket, "GET", "/_ping", None) {
                return Ok(d);
            }
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("dockerd exited: {status}; log:\n{}", d.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("dockerd never answered; log:\n{}", d.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A request that must answer with a 2xx status; returns the body.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Res<Vec<u8>> {
        let (status, out) = request(&self.socket, method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&out)
            ));
        }
        Ok(out)
    }

    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Res<serde_json::Value> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let out = self.call(
            method,
            path,
            bytes.as_deref().map(|b| ("application/json", b)),
        )?;
        if out.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&out).map_err(|e| format!("{method} {path}: {e}"))
    }

    /// `POST /images/load` of a `docker save` tarball; fails on an error
    /// message in the progress stream.
    pub fn load(&self, tarball: &[u8]) -> Res<()> {
        let out = self.call(
            "POST",
            "/images/load?quiet=1",
            Some(("application/x-tar", tarball)),
        )?;
        let text = String::from_utf8_lossy(&out);
        if text.contains("\"error") {
            return Err(format!("image load: {text}"));
        }
        Ok(())
    }

    /// Creates a container of `image`; returns its id.
    pub fn create_container(&self, image: &str) -> Res<String> {
        let v = self.json(
            "POST",
            "/containers/create",
            Some(serde_json::json!({"Image": image, "Cmd": ["/bin/sh"]})),
        )?;
        v["Id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no Id in {v}"))
    }

    /// `PUT /containers/<id>/archive?path=/`: Docker mounts the container's
    /// layer, unpacks `tar` into it and unmounts.
    pub fn put_archive(&self, id: &str, tar: &[u8]) -> Res<()> {
        self.call(
            "PUT",
            &format!("/containers/{id}/archive?path=/"),
            Some(("application/x-tar", tar)),
        )
        .map(|_| ())
    }

    /// The bytes of one file from a container's filesystem (Docker mounts
    /// the layer to read it).
    pub fn read_file(&self, id: &str, path: &str) -> Res<Vec<u8>> {
        let tar = self.call(
            "GET",
            &format!("/containers/{id}/archive?path={path}"),
            None,
        )?;
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().map_err(|e| e.to_string())?;
        let mut entry = entries
            .next()
            .ok_or_else(|| format!("{path}: empty archive"))?
            .map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        Ok(data)
    }

    pub fn remove_container(&self, id: &str) -> Res<()> {
        self.call("DELETE", &format!("/containers/{id}?force=1"), None)
            .map(|_| ())
    }

    /// The container's graph-driver mount id (its device hash).
    pub fn mount_id(&self, container: &str) -> Res<String> {
        let p = self
            .root
            .join("image/devicemapper/layerdb/mounts")
            .join(container)
            .join("mount-id");
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// SIGTERM and wait (Docker deactivates its devices and the pool).
    pub fn stop(&mut self) -> Res<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("dockerd did not stop; log:\n{}", self.log_tail()));
                }
            }
        }
        // Its managed containerd exits with it; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One HTTP/1.1 request over the unix socket (`Connection: close`);
/// returns the status and the de-chunked body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Res<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if let Some((ctype, b)) = body {
        head.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    if let Some((_, b)) = body {
        s.write_all(b).map_err(|e| e.to_string())?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("HTTP response without a header end")?;
    let header = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status: u16 = header
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {header}"))?;
    let chunked = header.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut b: &[u8]) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar of regular files (`path`, contents), as a layer or an archive for
/// `put_archive`.
pub fn files_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        t.append_data(&mut h, path, *data).expect("in-memory tar");
    }
    t.into_inner().expect("in-memory tar")
}

/// A `docker save` tarball of an image `tag` whose layers are `layers`
/// (each an uncompressed layer tar, bottom first).
pub fn image_tarball(tag: &str, layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    let history: Vec<serde_json::Value> = layers
        .iter()
        .map(|_| serde_json::json!({"created": "2023-11-14T22:13:20Z", "created_by": "thinsnap test"}))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .expect("json");
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha256_hex(l)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": layer_names,
    }]))
    .expect("json");
    let mut files: Vec<(&str, &[u8])> = vec![("manifest.json", &manifest), (&config_name, &config)];
    let mut seen = std::collections::HashSet::new();
    for (name, layer) in layer_names.iter().zip(layers) {
        if seen.insert(name.clone()) {
            files.push((name, layer));
        }
    }
    files_tar(&files)
}
