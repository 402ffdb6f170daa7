//! Mounts described instead of performed: what a layer looks like as a
//! `mount(2)` call someone else makes. containerd mounts snapshots itself,
//! so the service hands these out; `perform` does the same job for the CLI
//! and the tests, option for option as containerd interprets them.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::{IoContext, Result, SnapshotError};

/// One mount: `mount -t <kind> -o <options> <source> <target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (`overlay`, `bind`, `xfs`, `ext4`).
    pub kind: String,
    /// Device, directory or `overlay`.
    pub source: String,
    /// Where below the snapshot's root it goes; `None` for the root itself.
    pub target: Option<PathBuf>,
    /// Options in `mount -o` spelling (`ro`, `rbind`, `nouuid`, `lowerdir=...`).
    pub options: Vec<String>,
}

impl MountSpec {
    /// A bind mount of `dir`; read-only when `readonly`.
    pub fn bind(dir: &Path, readonly: bool) -> Self {
        MountSpec {
            kind: "bind".into(),
            source: dir.display().to_string(),
            target: None,
            options: vec!["rbind".into(), if readonly { "ro" } else { "rw" }.into()],
        }
    }

    /// True when the options make the mount read-only.
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Options that are flags to mount(2); everything else is filesystem data.
fn flag(option: &str) -> Option<(bool, MsFlags)> {
    Some(match option {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "rprivate" => (true, MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "private" => (true, MsFlags::MS_PRIVATE),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "defaults" => (false, MsFlags::empty()),
        _ => return None,
    })
}

/// Splits options into mount flags and the data string, as containerd does.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts `spec` on `target` the way containerd would: bind mounts made
/// read-only by a second remount (the kernel ignores `MS_RDONLY` on the
/// first bind call), propagation flags applied separately.
pub fn perform(spec: &MountSpec, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&spec.options);
    let propagation = MsFlags::MS_SHARED | MsFlags::MS_PRIVATE | MsFlags::MS_SLAVE;
    let base = flags & !propagation;
    let fstype = if spec.kind == "bind" {
        None
    } else {
        Some(spec.kind.as_str())
    };
    let data_opt = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    if data.len() >= page_size() {
        return Err(SnapshotError::invalid(format!(
            "mount options for {} are {} bytes, over the kernel's {}-byte limit",
            spec.source,
            data.len(),
            page_size()
        )));
    }
    mount(
        Some(Path::new(&spec.source)),
        target,
        fstype,
        base,
        data_opt,
    )
    .map_err(std::io::Error::from)
    .ctx(
        &format!("mounting {} ({}) on", spec.source, spec.kind),
        target,
    )?;
    if base.contains(MsFlags::MS_BIND) && base.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base;
        if let Err(e) = mount(None::<&Path>, target, None::<&str>, remount, None::<&str>) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            return Err(SnapshotError::io_path(
                "remounting read-only",
                target,
                e.into(),
            ));
        }
    }
    let prop = flags & propagation;
    if !prop.is_empty() {
        mount(None::<&Path>, target, None::<&str>, prop, None::<&str>)
            .map_err(std::io::Error::from)
            .ctx("setting propagation of", target)?;
    }
    Ok(())
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|p| p as usize)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nouuid", "rbind", "lowerdir=/a:/b", "rw", "nodev"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(!flags.contains(MsFlags::MS_RDONLY), "a later rw wins");
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NODEV));
        assert_eq!(data, "nouuid,lowerdir=/a:/b");
        let spec = MountSpec::bind(Path::new("/x"), true);
        assert!(spec.is_readonly());
        assert_eq!(spec.options, ["rbind", "ro"]);
    }
}
