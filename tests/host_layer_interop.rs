//! Interoperability with GNU tar, the other tool that reads and writes
//! layer tars on these hosts: its POSIX (PAX, with a global header and
//! xattrs) and GNU sparse archives apply correctly, and our diffs extract
//! with GNU tar to the same tree.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use thinsnap::layer::{self, WhiteoutFormat};

fn sample(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    xattr::set(root.join("usr/bin/tool"), "user.origin", b"line\nbreak").unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/alias")).unwrap();
    std::os::unix::fs::symlink("bin/tool", root.join("usr/link")).unwrap();
    let name = format!("usr/{}", "long-name-".repeat(20));
    fs::write(root.join(name), b"long").unwrap();
    let f = fs::File::create(root.join("usr/sparse")).unwrap();
    f.set_len(20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 10 << 20).unwrap();
}

#[test]
fn gnu_tar_archives_apply_and_our_diffs_extract() {
    common::require_root();
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    let work = tempfile::tempdir().unwrap();
    for (file, format) in [("posix.tar", "--format=posix"), ("gnu.tar", "--format=gnu")] {
        let out = work.path().join(file);
        common::run_tool(
            "tar",
            &[
                format,
                "--xattrs",
                "--xattrs-include=*",
                "--sparse",
                "--numeric-owner",
                "-C",
                src.path().to_str().unwrap(),
                "-cf",
                out.to_str().unwrap(),
                ".",
            ],
        );
        let dst = tempfile::tempdir().unwrap();
        let bytes = fs::read(&out).unwrap();
        layer::apply_tar(dst.path(), &mut bytes.as_slice(), WhiteoutFormat::Apply)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let sparse = fs::metadata(dst.path().join("usr/sparse")).unwrap();
        assert_eq!(sparse.len(), 20 << 20, "{file}");
        assert!(sparse.blocks() * 512 < 1 << 20, "{file}: holes inflated");
        assert_eq!(
            xattr::get(dst.path().join("usr/bin/tool"), "user.origin")
                .unwrap()
                .as_deref(),
            Some(&b"line\nbreak"[..]),
            "{file}"
        );
        assert_eq!(
            fs::metadata(dst.path().join("usr/bin/alias"))
                .unwrap()
                .ino(),
            fs::metadata(dst.path().join("usr/bin/tool")).unwrap().ino(),
            "{file}: hardlink"
        );
        assert_eq!(
            fs::metadata(dst.path().join("usr/bin/tool"))
                .unwrap()
                .mode()
                & 0o7777,
            0o4755
        );
        // GNU tar keeps only whole seconds for the gnu format, so compare
        // everything but file mtimes there.
        let changes = layer::changes_between(dst.path(), Some(src.path())).unwrap();
        let non_time: Vec<_> = changes
            .iter()
            .filter(|c| {
                let (a, b) = (
                    dst.path().join(c.path.strip_prefix("/").unwrap()),
                    src.path().join(c.path.strip_prefix("/").unwrap()),
                );
                let (ma, mb) = (
                    fs::symlink_metadata(a).unwrap(),
                    fs::symlink_metadata(b).unwrap(),
                );
                ma.mtime() != mb.mtime() || ma.len() != mb.len() || ma.mode() != mb.mode()
            })
            .collect();
        assert!(non_time.is_empty(), "{file}: {non_time:?}");
    }

    // Our diff of the tree, extracted by GNU tar, is the same tree.
    let changes = layer::changes_between(src.path(), None).unwrap();
    let mut ours = Vec::new();
    layer::write_tar(src.path(), &changes, &mut ours).unwrap();
    let ours_path = work.path().join("ours.tar");
    fs::write(&ours_path, &ours).unwrap();
    let out = tempfile::tempdir().unwrap();
    common::run_tool(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-C",
            out.path().to_str().unwrap(),
            "-xf",
            ours_path.to_str().unwrap(),
        ],
    );
    let left = layer::changes_between(out.path(), Some(src.path())).unwrap();
    assert!(
        left.is_empty(),
        "GNU tar extracts our diff differently: {left:?}"
    );
}
