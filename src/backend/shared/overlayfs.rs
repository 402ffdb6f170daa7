//! The overlay filesystem as overlay2 and overlay (v1) use it: whether a
//! store root can carry it, mount options (escaped paths, Docker's fixed
//! options), and mounting with absolute paths or, when those do not fit in
//! one page, with paths relative to the store from a forked helper.

use std::path::Path;

use nix::mount::MsFlags;

use super::mounts;
use crate::snapshot::{MountSpec, Result, SnapshotError};

/// Checks that `home` (existing) can hold an overlay store for `driver`:
/// the kernel has overlay, the filesystem is one overlay stacks on, and it
/// reports d_type. Returns the backing filesystem's name.
pub fn check_root(home: &Path, driver: &str) -> Result<String> {
    if !mounts::kernel_has_filesystem("overlay") {
        return Err(SnapshotError::unsupported(
            format!("the {driver} backend"),
            "the running kernel has no overlay filesystem (it is not listed in /proc/filesystems; `modprobe overlay` may load it)",
        ));
    }
    let backing = backing_fs(home)?;
    if crate::probe::OVERLAY_INCOMPATIBLE.contains(&backing.as_str()) {
        return Err(SnapshotError::unsupported(
            format!("{driver} on {backing}"),
            format!(
                "{} is on {backing}, which overlay cannot use as its upper filesystem; put the store root on xfs or ext4",
                home.display()
            ),
        ));
    }
    match crate::probe::supports_d_type(home) {
        Ok(true) => Ok(backing),
        Ok(false) => Err(SnapshotError::unsupported(
            format!("{driver} on {} ({backing})", home.display()),
            "this filesystem does not report file types in directory entries (d_type); overlay needs them to recognise whiteouts, and without them deleted files reappear and layers break. Reformat with d_type support (xfs: `mkfs.xfs -n ftype=1`; ext4: the default `filetype` feature) or use another driver",
        )),
        Err(e) => Err(SnapshotError::io_path(
            "checking d_type support in",
            home,
            e,
        )),
    }
}

/// Docker's name of the filesystem `dir` is on.
pub fn backing_fs(dir: &Path) -> Result<String> {
    let st = nix::sys::statfs::statfs(dir)
        .map_err(|e| SnapshotError::io_path("reading the filesystem of", dir, e.into()))?;
    Ok(crate::probe::fs_name(st.filesystem_type().0))
}

/// Escapes a path for overlay mount data: `\`, `:` (the lowerdir
/// separator) and `,` (the option separator) get a backslash, which the
/// kernel removes.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The directories of one overlay mount, as paths (absolute, or relative to
/// the store for the forked mount).
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Lower directories, topmost first.
    pub lower: Vec<String>,
    /// Upper and work directory; `None` for a read-only overlay of lowers.
    pub upper_work: Option<(String, String)>,
}

impl Dirs {
    /// `lowerdir=...[,upperdir=...,workdir=...]` after the fixed options.
    pub fn options(&self, base: &[String]) -> Vec<String> {
        let mut opts = base.to_vec();
        let lower: Vec<String> = self.lower.iter().map(|l| escape(l)).collect();
        opts.push(format!("lowerdir={}", lower.join(":")));
        if let Some((upper, work)) = &self.upper_work {
            opts.push(format!("upperdir={}", escape(upper)));
            opts.push(format!("workdir={}", escape(work)));
        }
        opts
    }
}

/// Mounts an overlay on `target`: `absolute` when its mount data fits in a
/// page, else `relative` (resolved in `home`) from a forked helper.
pub fn mount(
    home: &Path,
    target: &Path,
    base: &[String],
    absolute: &Dirs,
    relative: &Dirs,
    label: Option<&str>,
) -> Result<()> {
    let abs = mounts::with_mount_label(absolute.options(base).join(","), label);
    let result = if mounts::fits_one_page(&abs) {
        mounts::mount_here("overlay", target, "overlay", MsFlags::empty(), &abs)
    } else {
        let rel = mounts::with_mount_label(relative.options(base).join(","), label);
        if !mounts::fits_one_page(&rel) {
            return Err(SnapshotError::invalid(format!(
                "the overlay mount options for {} are {} bytes even with paths relative to {}; the kernel accepts at most {}",
                target.display(),
                rel.len(),
                home.display(),
                mounts::page_size() - 1
            )));
        }
        mounts::mount_from(home, "overlay", target, "overlay", MsFlags::empty(), &rel)
    };
    result.map_err(|e| SnapshotError::io_path("mounting an overlay on", target, e))
}

/// The overlay as containerd mounts it (absolute paths; containerd
/// shortens long lowerdir lists itself). `readonly` adds `ro`.
pub fn spec(base: &[String], dirs: &Dirs, readonly: bool) -> MountSpec {
    let mut options = Vec::new();
    if readonly {
        options.push("ro".to_string());
    }
    options.extend(dirs.options(base));
    MountSpec {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: None,
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_separators() {
        assert_eq!(escape("/a/sha256:b,c\\d"), "/a/sha256\\:b\\,c\\\\d");
        let dirs = Dirs {
            lower: vec!["/l/A".into(), "/l/B:x".into()],
            upper_work: Some(("/u".into(), "/w".into())),
        };
        assert_eq!(
            dirs.options(&["index=off".into()]),
            [
                "index=off",
                "lowerdir=/l/A:/l/B\\:x",
                "upperdir=/u",
                "workdir=/w"
            ]
        );
        let ro = spec(
            &[],
            &Dirs {
                lower: vec!["/a".into()],
                upper_work: None,
            },
            true,
        );
        assert_eq!(ro.options, ["ro", "lowerdir=/a"]);
        assert!(ro.is_readonly());
    }
}
