//! Docker's overlay2 layout, names and file formats:
//!
//! ```text
//! <root>/overlay2/                      0700
//!   l/                                  0700
//!     <LINK> -> ../<id>/diff            one symlink per layer, LINK = 26 chars [A-Z2-7]
//!   <id>/                               0700
//!     diff/                             0755  the layer's own files (upper dir)
//!     link                              0644  "<LINK>" (no newline)
//!     lower                             0644  "l/<P1>:l/<P2>:..." nearest parent first (layers with a parent)
//!     work/                             0700  overlay's work dir (layers with a parent)
//!     merged/                           0700  mount point, exists while mounted
//! ```

use std::path::{Path, PathBuf};

use crate::snapshot::{LayerId, Result, SnapshotError};

/// Directory of the short links.
pub const LINK_DIR: &str = "l";
/// Length of a link name (Docker's `idLength`).
pub const LINK_LEN: usize = 26;
/// Most lower layers a layer may have (Docker's `maxDepth`).
pub const MAX_LOWERS: usize = 128;

pub const DIFF: &str = "diff";
pub const WORK: &str = "work";
pub const MERGED: &str = "merged";
pub const LINK_FILE: &str = "link";
pub const LOWER_FILE: &str = "lower";

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A fresh random link name: 26 base32 characters, as Docker's `GenerateID`.
pub fn new_link_name() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    base32_prefix(&bytes, LINK_LEN)
}

/// The first `len` base32 characters of `bytes`.
fn base32_prefix(bytes: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
            if out.len() == len {
                return out;
            }
        }
        acc &= (1 << bits) - 1;
    }
    out
}

/// True for a link name Docker or thinsnap could have written: 1..=64
/// characters of `[A-Z0-9]`, so it can never carry a `,` `:` or `/` into
/// mount options.
pub fn valid_link_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// Parses a `lower` file: `l/A:l/B:...` into link names, nearest first.
pub fn parse_lower(text: &str, file: &Path) -> Result<Vec<String>> {
    let corrupt = |detail: String| SnapshotError::Corrupt {
        path: file.to_path_buf(),
        detail,
    };
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(':')
        .map(|entry| {
            let name = entry
                .strip_prefix("l/")
                .ok_or_else(|| corrupt(format!("lower entry {entry:?} does not start with l/")))?;
            if valid_link_name(name) {
                Ok(name.to_string())
            } else {
                Err(corrupt(format!("lower entry {entry:?} is not a link name")))
            }
        })
        .collect()
}

/// Formats link names as a `lower` file.
pub fn format_lower(links: &[String]) -> String {
    links
        .iter()
        .map(|l| format!("{LINK_DIR}/{l}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The layer id an `l/` symlink target (`../<id>/diff`) names.
pub fn link_target_id(target: &Path) -> Option<LayerId> {
    let mut comps = target.components();
    let dotdot = comps.next()?;
    let id = comps.next()?;
    let diff = comps.next()?;
    if dotdot.as_os_str() != ".." || diff.as_os_str() != DIFF || comps.next().is_some() {
        return None;
    }
    LayerId::new(id.as_os_str().to_str()?).ok()
}

/// The symlink target for layer `id`: `../<id>/diff`.
pub fn link_target(id: &LayerId) -> PathBuf {
    Path::new("..").join(id.as_str()).join(DIFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_26_base32_chars() {
        let a = new_link_name();
        let b = new_link_name();
        assert_eq!(a.len(), LINK_LEN);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| BASE32.contains(&c)), "{a}");
        assert!(valid_link_name(&a));
        assert_eq!(base32_prefix(b"foobar", 8), "MZXW6YTB");
    }

    #[test]
    fn lower_files_round_trip_and_refuse_junk() {
        let f = Path::new("/x/lower");
        let links = vec!["AAAA".to_string(), "BB2C".to_string()];
        let text = format_lower(&links);
        assert_eq!(text, "l/AAAA:l/BB2C");
        assert_eq!(parse_lower(&text, f).unwrap(), links);
        assert!(parse_lower("", f).unwrap().is_empty());
        for bad in ["AAAA", "l/AA,upperdir=/etc", "l/../x", "l/", "l/aa"] {
            let e = parse_lower(bad, f).unwrap_err();
            assert!(e.to_string().contains("/x/lower"), "{bad}: {e}");
        }
    }

    #[test]
    fn link_targets() {
        let id = LayerId::new("abc").unwrap();
        assert_eq!(link_target(&id), Path::new("../abc/diff"));
        assert_eq!(link_target_id(&link_target(&id)), Some(id));
        assert_eq!(link_target_id(Path::new("../abc/work")), None);
        assert_eq!(link_target_id(Path::new("/etc/diff")), None);
        assert_eq!(link_target_id(Path::new("../a/diff/x")), None);
    }
}
