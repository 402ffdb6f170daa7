//! Whiteout names and markers: the OCI `.wh.` convention and how overlay and
//! aufs layer directories store the same facts natively.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Prefix of a whiteout file: `.wh.<name>` deletes `<name>` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of aufs metadata names (never layer content).
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// Marker file making its directory opaque (hides all lower children).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// aufs keeps hardlinks to lower-branch files here.
pub const AUFS_LINK_DIR: &str = ".wh..wh.plnk";
/// aufs internals at the root of a branch, skipped on export.
pub const AUFS_INTERNALS: &[&str] = &[".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph"];
/// overlay marks an opaque upper directory with this xattr set to `y`.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// overlay's own metadata xattrs: never exported, never accepted from a tar.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// What a directory entry name means under the `.wh.` convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker<'a> {
    /// Plain content.
    None,
    /// `.wh.<name>`: deletes `<name>` (the returned name; may be invalid,
    /// callers check it with [`valid_target`]).
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`.
    Opaque,
    /// Other `.wh..wh.*` names (aufs internals).
    Meta,
}

/// Classifies one path component.
pub fn classify(name: &OsStr) -> Marker<'_> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        Marker::Opaque
    } else if b.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
        Marker::Meta
    } else if let Some(rest) = b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        Marker::Whiteout(OsStr::from_bytes(rest))
    } else {
        Marker::None
    }
}

/// True when a whiteout's target is a real name (not empty, `.` or `..`).
pub fn valid_target(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !(b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0))
}

/// The whiteout file name for `name`.
pub fn whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(WHITEOUT_PREFIX);
    s.push(name);
    s
}

/// True for overlay's on-disk whiteout: a character device 0/0.
pub fn is_overlay_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(OsStr::new("etc")), Marker::None);
        assert_eq!(
            classify(OsStr::new(".wh.etc")),
            Marker::Whiteout(OsStr::new("etc"))
        );
        assert_eq!(classify(OsStr::new(".wh..wh..opq")), Marker::Opaque);
        assert_eq!(classify(OsStr::new(".wh..wh.plnk")), Marker::Meta);
        assert_eq!(
            classify(OsStr::new(".wh.")),
            Marker::Whiteout(OsStr::new(""))
        );
        assert_eq!(whiteout_name(OsStr::new("x")), OsStr::new(".wh.x"));
    }

    #[test]
    fn rejects_escaping_targets() {
        for bad in ["", ".", ".."] {
            assert!(!valid_target(OsStr::new(bad)), "{bad:?}");
        }
        assert!(valid_target(OsStr::new("...")));
        assert!(valid_target(OsStr::new("a")));
    }
}
