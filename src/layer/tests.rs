//! Round trips through the public functions: diff a tree, apply the tar,
//! compare; whiteouts and opaque directories in every format; refusals.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::apply::{Privileges, apply_tar_with};
use super::*;
use crate::snapshot::ErrorKind;

/// (name, type byte, size) of every entry.
fn entries(tar: &[u8]) -> Vec<(String, char, u64)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type().as_byte() as char,
                e.size(),
            )
        })
        .collect()
}

fn names(tar: &[u8]) -> Vec<String> {
    entries(tar).into_iter().map(|e| e.0).collect()
}

fn diff(layer: &Path, parent: Option<&Path>) -> Vec<u8> {
    let changes = changes_between(layer, parent).unwrap();
    let mut out = Vec::new();
    let n = write_tar(layer, &changes, &mut out).unwrap();
    assert_eq!(n, out.len() as u64);
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let changes = changes_between(a, Some(b)).unwrap();
    assert!(changes.is_empty(), "trees differ: {changes:?}");
}

/// A tree with every kind of entry a layer carries.
fn rich_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::write(root.join("etc/conf.d/a"), b"a").unwrap();
    fs::set_permissions(root.join("etc/conf.d"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("bin"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("bin"), root.join("bin-link")).unwrap();
    symlink("/etc/hosts", root.join("abs-link")).unwrap();
    symlink("../../outside", root.join("etc/rel-link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    xattr::set(root.join("etc/hosts"), "user.origin", b"test\0binary").unwrap();
    let mut sparse = File::create(root.join("sparse")).unwrap();
    sparse.write_all(b"head").unwrap();
    sparse.seek(SeekFrom::Start(32 << 20)).unwrap();
    sparse.write_all(b"tail").unwrap();
    drop(sparse);
    let long = root.join("d".repeat(120)).join("f".repeat(120));
    fs::create_dir_all(long.parent().unwrap()).unwrap();
    fs::write(&long, b"long name").unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join("etc/hosts"),
        &nix::sys::time::TimeSpec::new(1_600_000_000, 123_456_789),
        &nix::sys::time::TimeSpec::new(1_600_000_000, 123_456_789),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn full_tree_round_trip_keeps_everything() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let tar = diff(src.path(), None);
    let listed = entries(&tar);
    let bin_link = listed.iter().find(|e| e.0 == "bin-link").unwrap();
    assert_eq!(bin_link.1, '1', "second link is a tar hardlink");
    assert!(listed.iter().any(|e| e.0 == "fifo" && e.1 == '6'));

    let dst = tempfile::tempdir().unwrap();
    let applied = apply_tar(dst.path(), &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap();
    assert!(applied >= (32 << 20) + 4);
    assert_same_tree(dst.path(), src.path());
    let sp = fs::metadata(dst.path().join("sparse")).unwrap();
    assert_eq!(sp.len(), (32 << 20) + 4);
    assert!(
        sp.blocks() * 512 < 1 << 20,
        "holes inflated: {} blocks",
        sp.blocks()
    );
    assert_eq!(
        fs::metadata(dst.path().join("bin")).unwrap().ino(),
        fs::metadata(dst.path().join("bin-link")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(dst.path().join("etc/hosts"))
            .unwrap()
            .mtime_nsec(),
        123_456_789
    );

    // Diffing the copy gives the same bytes: diffs are reproducible.
    assert_eq!(diff(dst.path(), None), tar);
}

#[test]
fn compressed_tars_apply_the_same() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let tar = diff(src.path(), None);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::stream::encode_all(tar.as_slice(), 3).unwrap();
    for data in [gz, zst] {
        let dst = tempfile::tempdir().unwrap();
        apply_tar(dst.path(), &mut data.as_slice(), WhiteoutFormat::Apply).unwrap();
        assert_same_tree(dst.path(), src.path());
    }
}

/// parent: /a/{keep,gone}, /b/{x,y}; child deletes /a/gone and replaces /b.
fn parent_and_child() -> (tempfile::TempDir, tempfile::TempDir) {
    let parent = tempfile::tempdir().unwrap();
    let p = parent.path();
    fs::create_dir_all(p.join("a")).unwrap();
    fs::write(p.join("a/keep"), b"k").unwrap();
    fs::write(p.join("a/gone"), b"g").unwrap();
    fs::create_dir_all(p.join("b/sub")).unwrap();
    fs::write(p.join("b/x"), b"x").unwrap();
    fs::write(p.join("b/sub/y"), b"y").unwrap();
    let child = tempfile::tempdir().unwrap();
    let c = child.path();
    copy_tree(p, c).unwrap();
    fs::remove_file(c.join("a/gone")).unwrap();
    fs::remove_dir_all(c.join("b")).unwrap();
    fs::create_dir(c.join("b")).unwrap();
    fs::write(c.join("b/new"), b"n").unwrap();
    (parent, child)
}

#[test]
fn whiteouts_and_opaque_dirs_reproduce_the_child() {
    let (parent, child) = parent_and_child();
    let tar = diff(child.path(), Some(parent.path()));
    assert_eq!(
        names(&tar),
        ["a/", "a/.wh.gone", "b/", "b/.wh..wh..opq", "b/new"]
    );
    let fresh = tempfile::tempdir().unwrap();
    copy_tree(parent.path(), fresh.path()).unwrap();
    apply_tar(fresh.path(), &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap();
    assert_same_tree(fresh.path(), child.path());
    assert!(!fresh.path().join("b/sub").exists());
}

#[test]
fn overlay_and_aufs_layer_dirs_translate_both_ways() {
    let (parent, child) = parent_and_child();
    let tar = diff(child.path(), Some(parent.path()));
    for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Aufs] {
        let upper = tempfile::tempdir().unwrap();
        apply_tar(upper.path(), &mut tar.as_slice(), format).unwrap();
        match format {
            WhiteoutFormat::Overlay => {
                let wh = fs::symlink_metadata(upper.path().join("a/gone")).unwrap();
                assert!(whiteout::is_overlay_whiteout(&wh), "char 0/0 whiteout");
                assert_eq!(
                    xattr::get(upper.path().join("b"), whiteout::OVERLAY_OPAQUE_XATTR).unwrap(),
                    Some(b"y".to_vec())
                );
                assert!(!upper.path().join("b/.wh..wh..opq").exists());
            }
            _ => {
                assert!(upper.path().join("a/.wh.gone").is_file());
                assert!(upper.path().join("b/.wh..wh..opq").is_file());
            }
        }
        let changes = changes_in_layer_dir(upper.path(), format, &[parent.path()]).unwrap();
        assert_eq!(
            changes,
            changes_between(child.path(), Some(parent.path())).unwrap(),
            "{format:?}"
        );
        let mut out = Vec::new();
        write_layer_dir_tar(upper.path(), format, &mut out).unwrap();
        assert_eq!(names(&out), names(&tar), "{format:?}");
        // And the translated tar still turns the parent into the child.
        let fresh = tempfile::tempdir().unwrap();
        copy_tree(parent.path(), fresh.path()).unwrap();
        apply_tar(fresh.path(), &mut out.as_slice(), WhiteoutFormat::Apply).unwrap();
        assert_same_tree(fresh.path(), child.path());
    }
}

#[test]
fn diff_size_counts_changed_files_once() {
    let (parent, child) = parent_and_child();
    fs::write(child.path().join("big"), vec![1u8; 10_000]).unwrap();
    fs::hard_link(child.path().join("big"), child.path().join("big2")).unwrap();
    let changes = changes_between(child.path(), Some(parent.path())).unwrap();
    assert_eq!(changes_size(child.path(), &changes).unwrap(), 10_000 + 1);
}

#[test]
fn whiteout_never_removes_entries_of_the_same_tar() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "x", &b"hi"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, ".wh.x", &b""[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    apply_tar(dst.path(), &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap();
    assert_eq!(fs::read(dst.path().join("x")).unwrap(), b"hi");
}

#[test]
fn unprivileged_apply_drops_setuid() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("su"), b"x").unwrap();
    fs::set_permissions(src.path().join("su"), fs::Permissions::from_mode(0o6755)).unwrap();
    let tar = diff(src.path(), None);
    let dst = tempfile::tempdir().unwrap();
    apply_tar_with(
        dst.path(),
        &mut tar.as_slice(),
        WhiteoutFormat::Apply,
        Privileges { keep_owner: false },
    )
    .unwrap();
    assert_eq!(
        fs::metadata(dst.path().join("su")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn truncated_tar_is_a_clear_error() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("file"), vec![7u8; 5000]).unwrap();
    let tar = diff(src.path(), None);
    let cut = &tar[..tar.len() / 2];
    let dst = tempfile::tempdir().unwrap();
    let e = apply_tar(dst.path(), &mut &cut[..], WhiteoutFormat::Apply).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let msg = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(msg.contains("file"), "{msg}");
}

#[test]
fn symlink_then_write_through_it_is_refused() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "etc", "/etc").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "etc/thinsnap-canary", &b"x"[..])
        .unwrap();
    let tar = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let e = apply_tar(dst.path(), &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap_err();
    let text = format!("{e} {:?}", e);
    assert!(text.contains("etc/thinsnap-canary"), "{text}");
    assert!(text.contains("symlink"), "{text}");
    assert!(!Path::new("/etc/thinsnap-canary").exists());
}

#[test]
fn reading_back_what_was_read() {
    // A tar written by write_tar parses with GNU tar semantics: check the
    // long-name entry decodes to the full path.
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let tar = diff(src.path(), None);
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    assert!(names(&tar).contains(&long));
    let mut a = tar::Archive::new(tar.as_slice());
    let mut found = String::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == long.as_bytes() {
            e.read_to_string(&mut found).unwrap();
        }
    }
    assert_eq!(found, "long name");
}
