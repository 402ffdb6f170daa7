//! Host side: boot QEMU on a job directory, relay the guest's output live,
//! enforce the timeout, and clean up (no qemu, disk image or temp dir left).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::job::{self, Job, StepResult};
use crate::kernel::Kernel;

/// How to boot the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mb: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Use KVM (`THINSNAP_VM_ACCEL=kvm`); TCG otherwise, because nested
    /// KVM on the CI machines aborts or hangs.
    pub kvm: bool,
    /// Sizes of extra raw disks (`/dev/vda`, `/dev/vdb`, ... in the guest).
    pub disks: Vec<u64>,
    /// Where logs of a failed run are kept.
    pub log_root: PathBuf,
}

impl VmConfig {
    pub fn from_env(default_timeout: Duration) -> VmConfig {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(d)
        };
        VmConfig {
            memory_mb: num("THINSNAP_VM_MEM", 4096) as u32,
            cpus: num("THINSNAP_VM_CPUS", 2) as u32,
            timeout: Duration::from_secs(num("THINSNAP_VM_TIMEOUT", default_timeout.as_secs())),
            kvm: std::env::var("THINSNAP_VM_ACCEL").is_ok_and(|v| v == "kvm"),
            disks: Vec::new(),
            log_root: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/vm-logs"),
        }
    }
}

/// What a run produced.
pub struct Outcome {
    pub results: Vec<StepResult>,
    /// The VM did not finish the job (boot failure, crash or timeout).
    pub infra_error: Option<String>,
    /// Job directory kept for debugging (failed runs only).
    pub kept_logs: Option<PathBuf>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.infra_error.is_none() && self.results.iter().all(|r| r.passed())
    }
}

/// Kills qemu and removes disk images even if the runner panics or errors.
struct Guard {
    child: Option<Child>,
    job_dir: PathBuf,
    disks: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in &self.disks {
            let _ = fs::remove_file(d);
        }
        if self.job_dir.exists() {
            let _ = fs::remove_dir_all(&self.job_dir);
        }
    }
}

/// Directories the VM mounts its own filesystems over (tmpfs, devtmpfs,
/// proc, sysfs): a checkout or binary below them would be invisible in the
/// guest through the host-root share.
const GUEST_PRIVATE: &[&str] = &["/tmp", "/run", "/dev", "/proc", "/sys"];

/// For each path below a guest-private directory, the top directory under
/// it (e.g. `/tmp/checkout` for `/tmp/checkout/target/debug/x`), shared
/// again so the guest sees it at the same path (read-only, with a tmpfs
/// overlay, like the rest of the host).
fn hidden_shares(paths: &[&Path]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        for private in GUEST_PRIVATE {
            if let Ok(rest) = p.strip_prefix(private)
                && let Some(first) = rest.components().next()
            {
                let dir = Path::new(private).join(first);
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
        }
    }
    out
}

pub fn run_job(
    kernel: &Kernel,
    initrd: &Path,
    job: &Job,
    config: &VmConfig,
) -> io::Result<Outcome> {
    let job_dir =
        std::env::temp_dir().join(format!("thinsnap-vm-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir(&job_dir)?;
    let mut guard = Guard {
        child: None,
        job_dir: job_dir.clone(),
        disks: Vec::new(),
    };
    let mut job = job.clone();
    let mut disk_names = Vec::new();
    for (i, size) in config.disks.iter().enumerate() {
        // Disks live beside, not inside, the 9p-shared job dir.
        let path = std::env::temp_dir().join(format!(
            "thinsnap-vm-disk-{}-{i}.img",
            uuid::Uuid::new_v4().simple()
        ));
        File::create(&path)?.set_len(*size)?;
        guard.disks.push(path);
        disk_names.push(format!("/dev/vd{}", (b'a' + i as u8) as char));
    }
    if !disk_names.is_empty() {
        for step in &mut job.steps {
            step.env
                .push(("THINSNAP_VM_DISKS".into(), disk_names.join(",")));
        }
    }
    fs::write(
        job_dir.join(job::JOB_FILE),
        serde_json::to_vec_pretty(&job)?,
    )?;

    let agent = std::env::current_exe()?;
    let console = job_dir.join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    if config.kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    cmd.arg("-m").arg(config.memory_mb.to_string());
    cmd.arg("-smp").arg(config.cpus.to_string());
    cmd.arg("-kernel").arg(&kernel.vmlinuz);
    cmd.arg("-initrd").arg(initrd);
    let cwd = std::env::current_dir()?;
    let shares = hidden_shares(&[agent.as_path(), cwd.as_path()]);
    let share_list: Vec<String> = shares.iter().map(|p| p.display().to_string()).collect();
    cmd.arg("-append").arg(format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 thinsnap.agent={} thinsnap.modules={} thinsnap.shares={}",
        agent.display(),
        kernel.modules_dir.display(),
        share_list.join(",")
    ));
    for (i, dir) in shares.iter().enumerate() {
        cmd.arg("-fsdev").arg(format!(
            "local,id=share{i},path={},security_model=passthrough,readonly=on,multidevs=remap",
            dir.display()
        ));
        cmd.arg("-device")
            .arg(format!("virtio-9p-pci,fsdev=share{i},mount_tag=share{i}"));
    }
    cmd.arg("-serial")
        .arg(format!("file:{}", console.display()));
    cmd.args([
        "-fsdev",
        "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
    ]);
    cmd.arg("-fsdev").arg(format!(
        "local,id=job,path={},security_model=passthrough,multidevs=remap",
        job_dir.display()
    ));
    cmd.args(["-device", "virtio-9p-pci,fsdev=job,mount_tag=job"]);
    cmd.args(["-device", "virtio-rng-pci"]);
    for d in &guard.disks {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            d.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it makes qemu die with the runner.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start qemu-system-x86_64 ({e}); install it with `make setup`"),
        )
    })?;
    guard.child = Some(child);

    let mut relay = Relay::new(&job_dir, job.steps.len());
    let mut infra_error = None;
    install_interrupt_handler();
    loop {
        relay.pump();
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            // Unwind normally so the guard kills qemu and removes the job dir.
            infra_error = Some("interrupted (SIGINT/SIGTERM); the VM was stopped".to_string());
            break;
        }
        let child = guard.child.as_mut().expect("child set above");
        if let Some(status) = child.try_wait()? {
            relay.pump();
            if !job_dir.join(job::DONE_FILE).exists() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                infra_error = Some(format!(
                    "the VM stopped before finishing the job (qemu {status}){}",
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", stderr.trim())
                    }
                ));
            }
            guard.child = None;
            break;
        }
        if started.elapsed() > config.timeout {
            let _ = child.kill();
            let _ = child.wait();
            guard.child = None;
            relay.pump();
            infra_error = Some(format!(
                "the VM did not finish within {} s (THINSNAP_VM_TIMEOUT) and was killed",
                config.timeout.as_secs()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut results = Vec::new();
    for i in 0..job.steps.len() {
        match fs::read(job_dir.join(job::step_result(i))) {
            Ok(bytes) => results.push(serde_json::from_slice(&bytes).map_err(io::Error::other)?),
            Err(_) => break,
        }
    }
    let mut outcome = Outcome {
        results,
        infra_error,
        kept_logs: None,
    };
    if !outcome.passed() {
        let keep = config.log_root.join(format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id()
        ));
        if fs::create_dir_all(&keep).is_ok() {
            for entry in fs::read_dir(&job_dir)?.flatten() {
                let _ = fs::copy(entry.path(), keep.join(entry.file_name()));
            }
            outcome.kept_logs = Some(keep);
        }
        if outcome.infra_error.is_some() {
            print_tail(&console, 60);
        }
    }
    drop(guard);
    Ok(outcome)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT/SIGTERM set a flag the wait loop checks, so the runner cleans up
/// (qemu, job directory, disk images) instead of dying mid-way.
fn install_interrupt_handler() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_interrupt),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &action) };
    }
}

fn print_tail(path: &Path, lines: usize) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    eprintln!(
        "---- last {lines} lines of the serial console ({}) ----",
        path.display()
    );
    for l in &all[all.len().saturating_sub(lines)..] {
        eprintln!("{l}");
    }
    eprintln!("---- end of console ----");
}

/// Copies each step's output to our stdout as the guest writes it.
struct Relay {
    dir: PathBuf,
    steps: usize,
    current: usize,
    offset: u64,
}

impl Relay {
    fn new(dir: &Path, steps: usize) -> Self {
        Relay {
            dir: dir.to_path_buf(),
            steps,
            current: 0,
            offset: 0,
        }
    }

    fn pump(&mut self) {
        while self.current < self.steps {
            let log = self.dir.join(job::step_log(self.current));
            if !log.exists() {
                return;
            }
            if let Ok(mut f) = OpenOptions::new().read(true).open(&log) {
                let _ = f.seek(SeekFrom::Start(self.offset));
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
                    self.offset += buf.len() as u64;
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                }
            }
            if self.dir.join(job::step_result(self.current)).exists() {
                // Read once more: the result is written after the log is closed.
                if let Ok(mut f) = File::open(&log) {
                    let _ = f.seek(SeekFrom::Start(self.offset));
                    let mut buf = Vec::new();
                    if f.read_to_end(&mut buf).is_ok() {
                        let _ = io::stdout().lock().write_all(&buf);
                    }
                }
                self.current += 1;
                self.offset = 0;
                continue;
            }
            return;
        }
    }
}
