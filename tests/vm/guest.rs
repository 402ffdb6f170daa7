//! Guest side (`thinsnap-vm guest JOB`), run by the initramfs as root inside
//! the VM: runs each step with a timeout, writes its output and result into
//! the shared job directory, and checks that the step left no dm device,
//! loop device or mount behind (cleaning up any it finds).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::job::{self, Job, Step, StepResult};

pub fn run(job_file: &Path) -> i32 {
    let dir = job_file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(job::AGENT_LOG))
        .ok();
    let mut note = |msg: String| {
        if let Some(l) = log.as_mut() {
            let _ = writeln!(l, "{msg}");
        }
    };
    let job: Job = match fs::read(job_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            note(format!("cannot read {}: {e}", job_file.display()));
            return 2;
        }
    };
    let baseline = Resources::snapshot();
    for (i, step) in job.steps.iter().enumerate() {
        let mut result = run_step(step, &dir.join(job::step_log(i)));
        if job.check_leaks && !step.echo_only {
            let now = Resources::snapshot();
            let leaks = now.minus(&baseline);
            if !leaks.is_empty() {
                note(format!(
                    "step {} left behind: {leaks:?}; cleaning up",
                    step.name
                ));
                cleanup(&leaks, &mut note);
                result.leaks = leaks.describe();
            }
        }
        let failed = !result.passed();
        let bytes = serde_json::to_vec_pretty(&result).unwrap_or_default();
        let _ = fs::write(dir.join(job::step_result(i)), bytes);
        if failed && job.stop_on_failure {
            note(format!("step {} failed; stopping", step.name));
            break;
        }
    }
    let _ = fs::write(dir.join(job::DONE_FILE), b"done\n");
    nix::unistd::sync();
    0
}

fn run_step(step: &Step, log_path: &Path) -> StepResult {
    let mut result = StepResult {
        name: step.name.clone(),
        ..Default::default()
    };
    let Ok(log) = File::create(log_path) else {
        result.spawn_error = Some(format!("cannot create {}", log_path.display()));
        return result;
    };
    let mut header = log.try_clone().ok();
    if let Some(h) = header.as_mut() {
        let line = if step.echo_only {
            format!("\n### {}\n", step.name)
        } else {
            format!("=== [vm] {} $ {}\n", step.name, step.argv.join(" "))
        };
        let _ = h.write_all(line.as_bytes());
    }
    if step.echo_only {
        result.exit_code = Some(0);
        return result;
    }
    let Some((program, args)) = step.argv.split_first() else {
        result.spawn_error = Some("empty command".into());
        return result;
    };
    let stderr = match log.try_clone() {
        Ok(f) => f,
        Err(e) => {
            result.spawn_error = Some(e.to_string());
            return result;
        }
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&step.cwd)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .env("RUST_BACKTRACE", "1")
        .env("THINSNAP_IN_VM", "1")
        .env("DM_DISABLE_UDEV", "1")
        .envs(step.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.spawn_error = Some(format!("{program}: {e}"));
            return result;
        }
    };
    let deadline = Duration::from_secs(step.timeout_secs.max(1));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > deadline => {
                result.timed_out = true;
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                result.spawn_error = Some(format!("waiting for {program}: {e}"));
                break None;
            }
        }
    };
    result.seconds = started.elapsed().as_secs_f64();
    if let Some(status) = status {
        result.exit_code = status.code();
        result.signal = status.signal();
    }
    // Whatever the step forked into its process group goes with it.
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    if let Some(h) = header.as_mut() {
        let verdict = if result.exit_code == Some(0) && !result.timed_out {
            "ok"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            h,
            "=== [vm] {} {verdict} in {:.1} s",
            step.name, result.seconds
        );
    }
    result
}

/// Kernel objects a test could leak.
#[derive(Debug, Default)]
struct Resources {
    mounts: BTreeSet<String>,
    dm: BTreeSet<String>,
    loops: BTreeSet<String>,
}

impl Resources {
    fn snapshot() -> Resources {
        let mut r = Resources::default();
        if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
            for line in text.lines() {
                if let Some(mp) = line.split(' ').nth(4) {
                    r.mounts.insert(mp.to_string());
                }
            }
        }
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("dm-") {
                    let dm_name = fs::read_to_string(e.path().join("dm/name"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or(name);
                    r.dm.insert(dm_name);
                } else if name.starts_with("loop") && e.path().join("loop/backing_file").exists() {
                    r.loops.insert(format!("/dev/{name}"));
                }
            }
        }
        r
    }

    fn minus(&self, base: &Resources) -> Resources {
        Resources {
            mounts: self.mounts.difference(&base.mounts).cloned().collect(),
            dm: self.dm.difference(&base.dm).cloned().collect(),
            loops: self.loops.difference(&base.loops).cloned().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.dm.is_empty() && self.loops.is_empty()
    }

    fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self.mounts.iter().map(|m| format!("mount {m}")).collect();
        v.extend(self.dm.iter().map(|d| format!("dm device {d}")));
        v.extend(self.loops.iter().map(|l| format!("loop device {l}")));
        v
    }
}

fn cleanup(leaks: &Resources, note: &mut impl FnMut(String)) {
    // Deepest mounts first; a plain unmount, then a lazy one if busy.
    let mut mounts: Vec<&String> = leaks.mounts.iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        if nix::mount::umount2(m.as_str(), nix::mount::MntFlags::empty()).is_err()
            && let Err(e) = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH)
        {
            note(format!("umount {m}: {e}"));
        }
    }
    // Devices that others are stacked on (pools) go last: removing a pool
    // under an open thin device can hang on queued I/O.
    let mut dm: Vec<&String> = leaks.dm.iter().collect();
    dm.sort_by_key(|d| (has_holders(d), d.to_string()));
    for _ in 0..4 {
        let mut left = 0;
        for d in &dm {
            if !dm_exists(d) {
                continue;
            }
            let removed =
                run_with_timeout(Command::new("dmsetup").args(["remove", d.as_str()]), 10)
                    || run_with_timeout(
                        Command::new("dmsetup").args(["remove", "--force", d.as_str()]),
                        10,
                    );
            if !removed {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    for l in &leaks.loops {
        let _ = run_with_timeout(Command::new("losetup").args(["-d", l.as_str()]), 10);
    }
}

/// True when another dm device sits on top of `name` (/sys/block/dm-N/holders).
fn has_holders(name: &str) -> bool {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return false;
    };
    for e in entries.flatten() {
        if fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == name) {
            return fs::read_dir(e.path().join("holders")).is_ok_and(|mut h| h.next().is_some());
        }
    }
    false
}

/// Runs a clean-up tool, killing it after `secs`; true when it succeeded.
fn run_with_timeout(cmd: &mut Command, secs: u64) -> bool {
    let Ok(mut child) = cmd
        .env("DM_DISABLE_UDEV", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if started.elapsed() > Duration::from_secs(secs) => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return false,
        }
    }
}

fn dm_exists(name: &str) -> bool {
    run_with_timeout(Command::new("dmsetup").args(["info", name]), 10)
}
