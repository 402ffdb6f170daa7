//! Who keeps a device busy: processes with it open, with their working
//! directory inside its mount, or with it mounted in another mount
//! namespace (the classic cause of Docker's "Device is Busy", moby #27381).

use std::fs;
use std::path::Path;

use super::control::DevNo;

/// One line per holder, e.g. `pid 812 (bash) has its working directory in /x`.
pub fn find(devno: DevNo, device_paths: &[&Path], mountpoint: Option<&Path>) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    let devno_s = devno.to_string();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = fs::read_to_string(p.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if let Some(mp) = mountpoint
            && let Ok(cwd) = fs::read_link(p.path().join("cwd"))
            && cwd.starts_with(mp)
        {
            found.push(format!(
                "pid {pid} ({comm}) has its working directory in {}",
                cwd.display()
            ));
        }
        if let Ok(fds) = fs::read_dir(p.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path()) {
                    if device_paths.iter().any(|d| *d == target) {
                        found.push(format!("pid {pid} ({comm}) has {} open", target.display()));
                        break;
                    }
                    if let Some(mp) = mountpoint
                        && target.starts_with(mp)
                    {
                        found.push(format!("pid {pid} ({comm}) has {} open", target.display()));
                        break;
                    }
                }
            }
        }
        // A mount of the device in another mount namespace.
        let own_ns = fs::read_link("/proc/self/ns/mnt").ok();
        let their_ns = fs::read_link(p.path().join("ns/mnt")).ok();
        if their_ns.is_some()
            && their_ns != own_ns
            && let Ok(info) = fs::read_to_string(p.path().join("mountinfo"))
            && let Some(line) = info
                .lines()
                .find(|l| l.split(' ').nth(2) == Some(devno_s.as_str()))
        {
            let at = line.split(' ').nth(4).unwrap_or("?");
            found.push(format!(
                "pid {pid} ({comm}) has it mounted at {at} in another mount namespace"
            ));
        }
    }
    found.sort();
    found.dedup();
    found
}
