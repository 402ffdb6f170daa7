//! Filesystems on thin devices: choosing, making, probing, growing, and
//! reading the UUID. External tools run with argument vectors and their
//! stderr lands in the error.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use super::error::DevmapperError;

/// Runs `program args…`; returns stdout, or an error carrying stderr.
pub fn run_tool(program: &str, args: &[&str], target: &Path) -> Result<String, DevmapperError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| DevmapperError::Tool {
            tool: program.to_string(),
            target: target.display().to_string(),
            status: "not started".into(),
            stderr: format!(
                "{e} (is it installed? `make setup` installs xfsprogs, e2fsprogs, util-linux)"
            ),
        })?;
    if !out.status.success() {
        return Err(DevmapperError::Tool {
            tool: format!("{program} {}", args.join(" ")),
            target: target.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Docker's default: xfs when mkfs.xfs exists and the kernel knows xfs, else ext4.
pub fn default_fs() -> &'static str {
    let has_mkfs_xfs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mkfs.xfs").is_file()))
        .unwrap_or(false);
    let kernel_xfs = std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("xfs"))
        })
        .unwrap_or(false);
    if has_mkfs_xfs && kernel_xfs {
        "xfs"
    } else {
        "ext4"
    }
}

/// Makes `fs` on `dev` the way Docker does (`dm.mkfsarg`s before the device).
pub fn mkfs(fs: &str, dev: &Path, extra: &[String]) -> Result<(), DevmapperError> {
    let dev_s = dev.to_string_lossy().into_owned();
    match fs {
        "xfs" => {
            let mut args: Vec<&str> = vec!["-q"];
            args.extend(extra.iter().map(String::as_str));
            args.push(&dev_s);
            run_tool("mkfs.xfs", &args, dev).map(|_| ())
        }
        "ext4" => {
            let attempt = |opts: &str| {
                let mut args: Vec<&str> = vec!["-q", "-E", opts];
                args.extend(extra.iter().map(String::as_str));
                args.push(&dev_s);
                run_tool("mkfs.ext4", &args, dev)
            };
            attempt("nodiscard,lazy_itable_init=0,lazy_journal_init=0")
                .or_else(|_| attempt("nodiscard,lazy_itable_init=0"))?;
            run_tool("tune2fs", &["-c", "-1", "-i", "0", &dev_s], dev).map(|_| ())
        }
        other => Err(DevmapperError::Other(format!(
            "Unsupported filesystem {other}"
        ))),
    }
}

/// The filesystem UUID (`blkid -s UUID -o value`, bypassing blkid's cache).
pub fn uuid(dev: &Path) -> Result<String, DevmapperError> {
    let dev_s = dev.to_string_lossy().into_owned();
    let out = run_tool(
        "blkid",
        &["-c", "/dev/null", "-s", "UUID", "-o", "value", &dev_s],
        dev,
    )?;
    let uuid = out.trim().to_string();
    if uuid.is_empty() {
        return Err(DevmapperError::Other(format!(
            "Failed to find uuid for device {}: blkid reported none",
            dev.display()
        )));
    }
    Ok(uuid)
}

/// Reads the superblock to name the filesystem (`xfs`, `ext4`, `btrfs`).
pub fn probe(dev: &Path) -> Result<Option<&'static str>, DevmapperError> {
    let mut f =
        File::open(dev).map_err(|e| DevmapperError::io(format!("opening {}", dev.display()), e))?;
    let mut head = [0u8; 0x440];
    f.read_exact(&mut head).map_err(|e| {
        DevmapperError::io(format!("reading the superblock of {}", dev.display()), e)
    })?;
    if &head[0..4] == b"XFSB" {
        return Ok(Some("xfs"));
    }
    if head[0x438] == 0x53 && head[0x439] == 0xEF {
        return Ok(Some("ext4"));
    }
    let mut btrfs = [0u8; 8];
    if f.seek(SeekFrom::Start(0x10040)).is_ok()
        && f.read_exact(&mut btrfs).is_ok()
        && &btrfs == b"_BHRfS_M"
    {
        return Ok(Some("btrfs"));
    }
    Ok(None)
}

/// Grows the filesystem on `dev`, mounted at `mountpoint`, to fill the device.
pub fn grow(fs: &str, dev: &Path, mountpoint: &Path) -> Result<(), DevmapperError> {
    match fs {
        "xfs" => run_tool("xfs_growfs", &[&mountpoint.to_string_lossy()], mountpoint).map(|_| ()),
        "ext4" => run_tool("resize2fs", &[&dev.to_string_lossy()], dev).map(|_| ()),
        other => Err(DevmapperError::Other(format!(
            "cannot grow a {other} filesystem"
        ))),
    }
}

/// Mount options Docker uses: `nouuid` for xfs (every snapshot shares the
/// base's UUID), `dm.mountopt`s, and the SELinux label.
pub fn mount_options(fs: &str, user: &[String], label: Option<&str>) -> String {
    let mut opts: Vec<String> = Vec::new();
    if fs == "xfs" {
        opts.push("nouuid".into());
    }
    opts.extend(
        user.iter()
            .flat_map(|o| o.split(','))
            .filter(|o| !o.is_empty())
            .map(String::from),
    );
    if let Some(l) = label.filter(|l| !l.is_empty()) {
        opts.push(format!("context=\"{l}\""));
    }
    opts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(mount_options("xfs", &[], None), "nouuid");
        assert_eq!(
            mount_options(
                "ext4",
                &["discard,noatime".into()],
                Some("system_u:object_r:x:s0")
            ),
            "discard,noatime,context=\"system_u:object_r:x:s0\""
        );
    }

    #[test]
    fn probe_recognises_superblocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut data = vec![0u8; 0x10100];
        data[0..4].copy_from_slice(b"XFSB");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(probe(&p).unwrap(), Some("xfs"));
        data[0..4].copy_from_slice(b"\0\0\0\0");
        data[0x438] = 0x53;
        data[0x439] = 0xEF;
        std::fs::write(&p, &data).unwrap();
        assert_eq!(probe(&p).unwrap(), Some("ext4"));
        data[0x438] = 0;
        data[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        std::fs::write(&p, &data).unwrap();
        assert_eq!(probe(&p).unwrap(), Some("btrfs"));
        std::fs::write(&p, vec![0u8; 0x10100]).unwrap();
        assert_eq!(probe(&p).unwrap(), None);
    }

    #[test]
    fn missing_tool_is_explained() {
        let e = run_tool("thinsnap-no-such-tool", &[], Path::new("/dev/x")).unwrap_err();
        assert!(e.to_string().contains("is it installed"), "{e}");
    }
}
