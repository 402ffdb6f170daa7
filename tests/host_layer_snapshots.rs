//! `changes_between` on snapshot trees (btrfs subvolume snapshots, as
//! devicemapper thin snapshots look too): a replaced directory is found by
//! its new inode number, even with a single old entry, and the diff turns a
//! fresh snapshot of the parent into the child exactly. Runs on a btrfs loop
//! filesystem made by the test (root).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use thinsnap::layer::{self, WhiteoutFormat};

/// A mounted btrfs loop filesystem, unmounted on drop (panic or not).
struct Btrfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Btrfs {
    fn new() -> Btrfs {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let f = fs::File::create(&img).unwrap();
        f.set_len(300 << 20).unwrap();
        drop(f);
        common::run_tool("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        common::run_tool(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        Btrfs { _dir: dir, mnt }
    }

    fn subvolume(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        common::run_tool("btrfs", &["-q", "subvolume", "create", p.to_str().unwrap()]);
        p
    }

    fn snapshot(&self, from: &Path, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        common::run_tool(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                from.to_str().unwrap(),
                p.to_str().unwrap(),
            ],
        );
        p
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

fn list(changes: &[thinsnap::snapshot::Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect()
}

#[test]
fn snapshot_trees_find_replaced_dirs_by_inode() {
    let fs_ = Btrfs::new();
    let parent = fs_.subvolume("parent");
    fs::create_dir_all(parent.join("a")).unwrap();
    fs::write(parent.join("a/keep"), b"k").unwrap();
    fs::write(parent.join("a/gone"), b"g").unwrap();
    fs::create_dir_all(parent.join("b")).unwrap();
    fs::write(parent.join("b/only"), b"o").unwrap();
    fs::create_dir_all(parent.join("c")).unwrap();
    fs::write(parent.join("c/f"), b"f").unwrap();
    let child = fs_.snapshot(&parent, "child");
    fs::remove_file(child.join("a/gone")).unwrap();
    fs::remove_dir_all(child.join("b")).unwrap();
    fs::create_dir(child.join("b")).unwrap();
    fs::write(child.join("b/new"), b"n").unwrap();
    fs::rename(child.join("c/f"), child.join("c/g")).unwrap();

    let changes = layer::changes_between(&child, Some(&parent)).unwrap();
    assert_eq!(
        list(&changes),
        [
            "C /a",
            "D /a/gone",
            "D /b",
            "A /b",
            "A /b/new",
            "C /c",
            "D /c/f",
            "A /c/g"
        ]
    );
    let mut tar = Vec::new();
    layer::write_tar(&child, &changes, &mut tar).unwrap();
    let fresh = fs_.snapshot(&parent, "fresh");
    layer::apply_tar(&fresh, &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap();

    // Compare as plain copies (vfs): inode numbers no longer matter there.
    let copies = tempfile::tempdir().unwrap();
    let copy = |src: &Path, name: &str| {
        let dst = copies.path().join(name);
        fs::create_dir(&dst).unwrap();
        layer::copy_tree(src, &dst).unwrap();
        dst
    };
    let (p2, c2, f2) = (copy(&parent, "p"), copy(&child, "c"), copy(&fresh, "f"));
    let left = layer::changes_between(&f2, Some(&c2)).unwrap();
    assert!(
        left.is_empty(),
        "fresh parent + diff differs from the child: {left:?}"
    );
    // A one-entry directory cannot be told from a rename in copies, so
    // there it is reported with explicit deletions.
    assert_eq!(
        list(&layer::changes_between(&c2, Some(&p2)).unwrap()),
        [
            "C /a",
            "D /a/gone",
            "C /b",
            "A /b/new",
            "D /b/only",
            "C /c",
            "D /c/f",
            "A /c/g"
        ]
    );
}
