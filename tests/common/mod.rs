//! Helpers shared by the integration tests. Each test file includes this
//! module with `mod common;`, so not every helper is used by every file.
#![allow(dead_code)]

use std::path::Path;

/// Fails the test (never skips it) unless it runs inside the test VM with
/// device-mapper available, and says how to run it properly.
pub fn require_vm() {
    let in_vm = std::env::var("THINSNAP_IN_VM").is_ok_and(|v| v == "1");
    let dm = Path::new("/dev/mapper/control").exists();
    if !(in_vm && dm) {
        panic!(
            "this test needs a kernel with dm-thin and must run inside the thinsnap test VM \
             ({}): run `make test-vm`, or one target with \
             `cargo run --bin thinsnap-vm -- test --target <name>`",
            if dm {
                "not started by thinsnap-vm"
            } else {
                "/dev/mapper/control is missing here"
            }
        );
    }
}

/// Fails the test unless it runs as root (host root tests: loop, overlay, mounts).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (loop devices, mounts): run `make test-host` as root");
    }
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_backed_by(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in entries.flatten() {
        if let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(backing.trim()).starts_with(dir)
        {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Names of all active dm devices.
pub fn dm_device_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            if let Ok(n) = std::fs::read_to_string(e.path().join("dm/name")) {
                names.push(n.trim().to_string());
            }
        }
    }
    names.sort();
    names
}

/// Runs a tool (argument vector, no shell) and returns stdout; panics with
/// its stderr on failure.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A filesystem made by a test on a sparse file and mounted with `-o loop`
/// (autoclear: the loop device goes away with the mount). Dropping it,
/// also during a panic, unmounts everything below the mount point, then
/// the filesystem itself.
pub struct LoopFs {
    pub mountpoint: std::path::PathBuf,
    _image_dir: tempfile::TempDir,
}

impl LoopFs {
    /// `mkfs` (program and arguments, the image path is appended) on a
    /// sparse file of `size_mib`, mounted on the existing empty directory
    /// `mountpoint`.
    pub fn new(mkfs: &[&str], size_mib: u64, mountpoint: &Path) -> LoopFs {
        let image_dir = tempfile::tempdir().expect("temp dir for the image");
        let image = image_dir.path().join("fs.img");
        let f = std::fs::File::create(&image).expect("image file");
        f.set_len(size_mib << 20).expect("sparse image");
        drop(f);
        let image_s = image.to_str().expect("utf-8 temp path");
        let mut args: Vec<&str> = mkfs[1..].to_vec();
        args.push(image_s);
        run_tool(mkfs[0], &args);
        run_tool(
            "mount",
            &[
                "-o",
                "loop",
                image_s,
                mountpoint.to_str().expect("utf-8 path"),
            ],
        );
        LoopFs {
            mountpoint: mountpoint.to_path_buf(),
            _image_dir: image_dir,
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<std::path::PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| std::path::PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&self.mountpoint))
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in below {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
