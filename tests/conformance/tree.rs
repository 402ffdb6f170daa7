//! An independent description of a mounted layer tree, so cases compare
//! contents without trusting the library's own change detection.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One path as a test sees it (directory mtimes are not compared: they
/// change whenever a child does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files: length and a hash of the contents; symlinks: the target;
    /// devices: major:minor.
    pub data: String,
    pub mtime: Option<(i64, i64)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Every path below `root` (relative, `/`-joined) with its description.
pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let (kind, data) = if ft.is_dir() {
            ('d', String::new())
        } else if ft.is_symlink() {
            (
                'l',
                fs::read_link(&path).unwrap().to_string_lossy().into_owned(),
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let c = if ft.is_char_device() { 'c' } else { 'b' };
            (
                c,
                format!("{}:{}", libc::major(md.rdev()), libc::minor(md.rdev())),
            )
        } else if ft.is_fifo() {
            ('p', String::new())
        } else {
            let bytes = fs::read(&path).unwrap();
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            ('f', format!("{}:{:x}", bytes.len(), h.finish()))
        };
        let mut xattrs: Vec<_> = xattr::list(&path)
            .map(|names| {
                names
                    .filter(|n| !n.to_string_lossy().starts_with("trusted.overlay."))
                    .filter_map(|n| {
                        let v = xattr::get(&path, &n).ok().flatten()?;
                        Some((n.to_string_lossy().into_owned(), v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                data,
                mtime: (kind != 'd').then(|| (md.mtime(), md.mtime_nsec())),
                xattrs,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Asserts two trees are the same, listing the paths that differ.
pub fn assert_same(what: &str, got: &BTreeMap<String, Node>, want: &BTreeMap<String, Node>) {
    let mut problems = Vec::new();
    for (path, node) in want {
        match got.get(path) {
            None => problems.push(format!("missing {path}")),
            Some(g) if g != node => problems.push(format!("{path}: got {g:?}, want {node:?}")),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("unexpected {path}"));
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}
