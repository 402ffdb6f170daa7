//! The guest kernel: Debian's `linux-image-amd64`, downloaded and unpacked
//! into a cache directory (never installed into the host's /boot), and the
//! busybox initramfs that boots it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

/// Modules the guest needs, loaded with their dependencies in modules.dep order.
pub const MODULES: &[&str] = &[
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio-rng",
    "9pnet_virtio",
    "9p",
    "overlay",
    "loop",
    "dm-mod",
    "dm-thin-pool",
    "xfs",
    "ext4",
    "btrfs",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package (depmod'ed).
    pub modules_dir: PathBuf,
}

/// Default cache location; `THINSNAP_VM_CACHE` overrides it.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("THINSNAP_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/thinsnap-vm"))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Returns the cached kernel, downloading and unpacking it on first use.
pub fn ensure(cache: &Path) -> Result<Kernel, String> {
    let manifest = cache.join("kernel.json");
    if let Ok(text) = fs::read_to_string(&manifest)
        && let Ok(k) = serde_json::from_str::<Kernel>(&text)
        && k.vmlinuz.is_file()
        && k.modules_dir.join("modules.dep").is_file()
    {
        return Ok(k);
    }
    fs::create_dir_all(cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let package = match kernel_package() {
        Some(p) => p,
        None => {
            // Fresh machines may have empty package lists.
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            kernel_package().ok_or(
                "apt-cache knows no linux-image-amd64 dependency even after apt-get update",
            )?
        }
    };
    let dl = cache.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).map_err(|e| format!("creating {}: {e}", dl.display()))?;
    eprintln!("thinsnap-vm: downloading {package} into {}", dl.display());
    run(Command::new("apt-get")
        .arg("download")
        .arg(&package)
        .current_dir(&dl))?;
    let deb = fs::read_dir(&dl)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {package} produced no .deb"))?;
    let root = cache.join(&package);
    let _ = fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    let modules_dir = root.join("lib/modules").join(&version);
    run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    let _ = fs::remove_dir_all(&dl);
    let kernel = Kernel {
        version,
        vmlinuz,
        modules_dir,
    };
    if !kernel.vmlinuz.is_file() {
        return Err(format!(
            "{} is missing from {package}",
            kernel.vmlinuz.display()
        ));
    }
    fs::write(
        &manifest,
        serde_json::to_vec_pretty(&kernel).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("writing {}: {e}", manifest.display()))?;
    Ok(kernel)
}

/// The versioned kernel package `linux-image-amd64` currently depends on.
fn kernel_package() -> Option<String> {
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).ok()?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(|p| p.trim().to_string())
}

/// Module files (relative to the modules dir) for `MODULES` and their
/// dependencies, dependencies first.
pub fn module_order(modules_dir: &Path) -> Result<Vec<String>, String> {
    let dep_path = modules_dir.join("modules.dep");
    let text = fs::read_to_string(&dep_path)
        .map_err(|e| format!("reading {}: {e}", dep_path.display()))?;
    let deps: Vec<(String, Vec<String>)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_string(),
                d.split_whitespace().map(String::from).collect(),
            )
        })
        .collect();
    let find = |name: &str| -> Option<&(String, Vec<String>)> {
        let alt = name.replace('-', "_");
        deps.iter().find(|(path, _)| {
            let base = path
                .rsplit('/')
                .next()
                .unwrap_or(path)
                .trim_end_matches(".ko");
            base == name || base.replace('-', "_") == alt
        })
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(
        path: &str,
        deps: &[(String, Vec<String>)],
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > 64 {
            return Err(format!("module dependency loop at {path}"));
        }
        if order.iter().any(|o| o == path) {
            return Ok(());
        }
        if let Some((_, ds)) = deps.iter().find(|(p, _)| p == path) {
            for d in ds {
                visit(d, deps, order, depth + 1)?;
            }
        }
        order.push(path.to_string());
        Ok(())
    }
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    for name in MODULES {
        match find(name) {
            Some((path, _)) => visit(path, &deps, &mut order, 0)?,
            None if builtin.contains(&format!("/{name}.ko")) => {}
            None => {
                return Err(format!(
                    "kernel module {name} not found in {}",
                    dep_path.display()
                ));
            }
        }
    }
    Ok(order)
}

/// Builds (or reuses) the gzip'ed newc initramfs for `kernel`.
pub fn initramfs(cache: &Path, kernel: &Kernel) -> Result<PathBuf, String> {
    let init = include_str!("init.sh");
    let busybox = Path::new("/bin/busybox");
    let order = module_order(&kernel.modules_dir)?;
    let key = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        use std::hash::{Hash, Hasher};
        init.hash(&mut h);
        order.hash(&mut h);
        kernel.version.hash(&mut h);
        fs::metadata(busybox)
            .map(|m| m.len())
            .unwrap_or(0)
            .hash(&mut h);
        h.finish()
    };
    let out = cache.join(format!("initramfs-{}-{key:016x}.cpio.gz", kernel.version));
    if out.is_file() {
        return Ok(out);
    }
    let bb = fs::read(busybox).map_err(|e| {
        format!(
            "reading {}: {e} (install busybox-static: `make setup`)",
            busybox.display()
        )
    })?;
    let mut cpio = Cpio::new();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "lib",
        "lib/modules",
        "host",
        "rw",
        "newroot",
    ] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("init", init.as_bytes(), 0o755);
    cpio.file("bin/busybox", &bb, 0o755);
    let base = format!("lib/modules/{}", kernel.version);
    cpio.dir(&base);
    let mut dirs = std::collections::BTreeSet::new();
    for m in &order {
        let mut p = Path::new(m).parent();
        let mut chain = Vec::new();
        while let Some(d) = p {
            if d.as_os_str().is_empty() {
                break;
            }
            chain.push(d.to_path_buf());
            p = d.parent();
        }
        for d in chain.into_iter().rev() {
            if dirs.insert(d.clone()) {
                cpio.dir(&format!("{base}/{}", d.display()));
            }
        }
        let data =
            fs::read(kernel.modules_dir.join(m)).map_err(|e| format!("reading module {m}: {e}"))?;
        cpio.file(&format!("{base}/{m}"), &data, 0o644);
    }
    cpio.file("modorder", (order.join("\n") + "\n").as_bytes(), 0o644);
    let bytes = cpio.finish();
    let tmp = out.with_extension("tmp");
    let mut enc = GzEncoder::new(
        fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?,
        Compression::fast(),
    );
    enc.write_all(&bytes)
        .and_then(|_| enc.finish().map(|_| ()))
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &out).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(out)
}

/// A minimal writer for the newc cpio format the kernel unpacks.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let namesz = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesz,
            0
        );
        self.ino += 1;
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

/// Ensures kernel and initramfs exist; returns both.
pub fn prepare() -> Result<(Kernel, PathBuf), String> {
    let cache = cache_dir();
    let kernel = ensure(&cache)?;
    let initrd = initramfs(&cache, &kernel)?;
    Ok((kernel, initrd))
}
