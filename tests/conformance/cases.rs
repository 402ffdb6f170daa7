//! The cases. Each works on a fresh store through `ctx.d()` only.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thinsnap::snapshot::container::{self, INIT_LAYER, InitEntry};
use thinsnap::snapshot::{ChangeKind, CreateOpts, Driver, ErrorKind, LayerId};

use super::tarbuild::{self, TarBuild};
use super::tree;
use super::{Ctx, ParentRemoval};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

fn create(d: &dyn Driver, name: &str, parent: Option<&str>) {
    let p = parent.map(id);
    d.create(&id(name), p.as_ref(), &CreateOpts::default())
        .unwrap_or_else(|e| panic!("create {name} on {parent:?}: {e}"));
}

/// Runs `f` with layer `name` mounted, then releases it.
fn with_layer<T>(d: &dyn Driver, name: &str, f: impl FnOnce(&Path) -> T) -> T {
    let path = d
        .get(&id(name), None)
        .unwrap_or_else(|e| panic!("get {name}: {e}"));
    let out = f(&path);
    d.put(&id(name))
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
    out
}

fn snapshot(d: &dyn Driver, name: &str) -> BTreeMap<String, tree::Node> {
    with_layer(d, name, tree::snapshot)
}

fn apply(d: &dyn Driver, name: &str, parent: Option<&str>, tar: &[u8]) -> u64 {
    let p = parent.map(id);
    d.apply_diff(&id(name), p.as_ref(), &mut &tar[..])
        .unwrap_or_else(|e| panic!("apply_diff to {name}: {e}"))
}

/// Creates `name` on `parent` and applies `tar` to it.
fn layer_from_tar(d: &dyn Driver, name: &str, parent: Option<&str>, tar: &[u8]) {
    create(d, name, parent);
    apply(d, name, parent, tar);
}

/// A parentless layer holding one directory `dir` with one file `dir/file`.
fn layer_with_file(d: &dyn Driver, name: &str, dir: &str, file: &str, data: &[u8]) {
    let tar = TarBuild::new()
        .dir(dir, 0o755)
        .file(&format!("{dir}/{file}"), data)
        .finish();
    layer_from_tar(d, name, None, &tar);
}

fn diff(d: &dyn Driver, name: &str, parent: Option<&str>) -> Vec<u8> {
    let p = parent.map(id);
    let mut out = Vec::new();
    let n = d
        .diff(&id(name), p.as_ref(), &mut out)
        .unwrap_or_else(|e| panic!("diff {name}: {e}"));
    assert_eq!(n, out.len() as u64, "diff reports the bytes it wrote");
    out
}

fn change_list(d: &dyn Driver, name: &str, parent: Option<&str>) -> Vec<String> {
    let p = parent.map(id);
    d.changes(&id(name), p.as_ref())
        .unwrap_or_else(|e| panic!("changes {name}: {e}"))
        .into_iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
        .collect()
}

/// When the backend cannot mount layers that have a parent
/// (`Caps::child_mount_refused`, aufs without the aufs module): asserts that
/// `get` of `name` (which has a parent) is refused clearly and leaves no
/// reference or mount behind, and returns true so the case stops there.
/// Returns false when such mounts work.
fn child_mount_refused(ctx: &Ctx, name: &str) -> bool {
    let Some(word) = ctx.caps.child_mount_refused else {
        return false;
    };
    let d = ctx.d();
    assert!(
        d.parent(&id(name)).unwrap().is_some(),
        "{name} must have a parent"
    );
    let err = d
        .get(&id(name), None)
        .expect_err("get of a layer with a parent must be refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains(word),
        "the refusal names {word}: {err}"
    );
    let info = d
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.id == id(name))
        .unwrap();
    assert_eq!(info.mount_count, 0, "a refused get holds no reference");
    assert!(ctx.mounts_left().is_empty());
    true
}

fn assert_kind<T: std::fmt::Debug>(r: thinsnap::snapshot::Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

// --- graphtest's base layer -------------------------------------------------

/// Docker graphtest `createBase`: umask 0, dir `a subdir` 0705|sticky owned
/// 1:2, file `a file` 0222|setuid holding "Some data".
fn create_base_layer(d: &dyn Driver, name: &str) {
    d.create_read_write(&id(name), None, &CreateOpts::default())
        .unwrap_or_else(|e| panic!("create_read_write {name}: {e}"));
    with_layer(d, name, |root| {
        let dir = root.join("a subdir");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1705)).unwrap();
        std::os::unix::fs::lchown(&dir, Some(1), Some(2)).unwrap();
        let file = root.join("a file");
        fs::write(&file, b"Some data").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4222)).unwrap();
    });
}

/// Docker graphtest `verifyBase`.
fn verify_base(d: &dyn Driver, name: &str) {
    with_layer(d, name, |root| {
        let dir = fs::symlink_metadata(root.join("a subdir")).unwrap();
        assert!(dir.is_dir());
        assert_eq!(dir.mode() & 0o7777, 0o1705, "a subdir mode");
        assert_eq!((dir.uid(), dir.gid()), (1, 2), "a subdir owner");
        let file = fs::symlink_metadata(root.join("a file")).unwrap();
        assert!(file.is_file());
        assert_eq!(file.mode() & 0o7777, 0o4222, "a file mode");
        assert_eq!(fs::read(root.join("a file")).unwrap(), b"Some data");
        assert_eq!(
            fs::read_dir(root).unwrap().count(),
            2,
            "exactly two entries"
        );
    });
}

pub fn create_empty(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "empty", None);
    assert!(d.exists(&id("empty")));
    assert_eq!(d.parent(&id("empty")).unwrap(), None);
    with_layer(d, "empty", |root| {
        let md = fs::metadata(root).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755, "root of a new layer is 0755");
        assert_eq!(
            (md.uid(), md.gid()),
            (0, 0),
            "root of a new layer is root-owned"
        );
        assert_eq!(fs::read_dir(root).unwrap().count(), 0, "new layer is empty");
    });
    let listed: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    assert_eq!(listed, ["empty"]);
}

pub fn create_base(ctx: &mut Ctx) {
    create_base_layer(ctx.d(), "baselayer");
    verify_base(ctx.d(), "baselayer");
}

pub fn create_snap(ctx: &mut Ctx) {
    let d = ctx.d();
    create_base_layer(d, "baselayer");
    create(d, "snap", Some("baselayer"));
    assert_eq!(d.parent(&id("snap")).unwrap(), Some(id("baselayer")));
    if child_mount_refused(ctx, "snap") {
        return;
    }
    verify_base(d, "snap");
    assert_eq!(d.parent(&id("snap")).unwrap(), Some(id("baselayer")));
}

pub fn basic_api_errors(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "a", None);
    assert_kind(
        d.create(&id("a"), None, &CreateOpts::default()),
        ErrorKind::AlreadyExists,
        "create twice",
    );
    assert_kind(
        d.create(&id("b"), Some(&id("missing")), &CreateOpts::default()),
        ErrorKind::NotFound,
        "create on an unknown parent",
    );
    assert!(!d.exists(&id("b")), "a failed create leaves nothing");
    assert_kind(
        d.get(&id("missing"), None),
        ErrorKind::NotFound,
        "get unknown",
    );
    assert_kind(
        d.remove(&id("missing")),
        ErrorKind::NotFound,
        "remove unknown",
    );
    assert_kind(
        d.parent(&id("missing")),
        ErrorKind::NotFound,
        "parent of unknown",
    );
    assert!(!d.exists(&id("missing")));
    create(d, "b", Some("a"));
    let listed: Vec<_> = d
        .list()
        .unwrap()
        .into_iter()
        .map(|l| (l.id.to_string(), l.parent.map(|p| p.to_string())))
        .collect();
    assert_eq!(listed, [("a".into(), None), ("b".into(), Some("a".into()))]);
    assert!(
        !d.status().unwrap().is_empty(),
        "status has something to say"
    );
}

// --- chains --------------------------------------------------------------------

/// A chain `l1 <- l2 <- ... <- ln` where layer k adds `file-k` holding "k".
fn build_chain(d: &dyn Driver, n: usize) -> thinsnap::snapshot::Result<()> {
    for k in 1..=n {
        let name = format!("l{k}");
        let parent = (k > 1).then(|| id(&format!("l{}", k - 1)));
        d.create(&id(&name), parent.as_ref(), &CreateOpts::default())?;
        let root = d.get(&id(&name), None)?;
        fs::write(root.join(format!("file-{k}")), k.to_string()).unwrap();
        d.put(&id(&name))?;
    }
    Ok(())
}

fn verify_chain_top(d: &dyn Driver, n: usize) {
    with_layer(d, &format!("l{n}"), |root| {
        assert_eq!(
            fs::read_dir(root).unwrap().count(),
            n,
            "top of the chain sees every layer's file"
        );
        for k in 1..=n {
            let got = fs::read_to_string(root.join(format!("file-{k}"))).unwrap();
            assert_eq!(got, k.to_string(), "file-{k}");
        }
    });
}

/// Without child mounts: the chain is only created, its parents checked,
/// and the top's mount refused.
fn chain_without_mounts(ctx: &Ctx, n: usize) -> bool {
    if ctx.caps.child_mount_refused.is_none() {
        return false;
    }
    let d = ctx.d();
    for k in 1..=n {
        let parent = (k > 1).then(|| format!("l{}", k - 1));
        create(d, &format!("l{k}"), parent.as_deref());
    }
    for k in 2..=n {
        assert_eq!(
            d.parent(&id(&format!("l{k}"))).unwrap(),
            Some(id(&format!("l{}", k - 1)))
        );
    }
    assert!(child_mount_refused(ctx, &format!("l{n}")));
    true
}

pub fn deep_chain_100(ctx: &mut Ctx) {
    if chain_without_mounts(ctx, 100) {
        return;
    }
    build_chain(ctx.d(), 100).unwrap();
    verify_chain_top(ctx.d(), 100);
}

pub fn depth_limit(ctx: &mut Ctx) {
    let d = ctx.d();
    match ctx.caps.max_depth {
        None => {
            // No limit claimed: a chain longer than overlay's 128 must work.
            if chain_without_mounts(ctx, 130) {
                return;
            }
            build_chain(d, 130).unwrap();
            verify_chain_top(d, 130);
        }
        Some(max) => {
            build_chain(d, max).unwrap();
            verify_chain_top(d, max);
            let over = id(&format!("l{}", max + 1));
            let err = match d.create(&over, Some(&id(&format!("l{max}"))), &CreateOpts::default()) {
                Err(e) => {
                    assert!(!d.exists(&over), "a refused create leaves nothing");
                    e
                }
                Ok(()) => {
                    let e = d
                        .get(&over, None)
                        .expect_err("a chain over the limit cannot be mounted");
                    d.remove(&over).unwrap();
                    e
                }
            };
            assert!(
                err.to_string().contains(&max.to_string()),
                "the error names the limit {max}: {err}"
            );
            assert_ne!(
                err.kind(),
                ErrorKind::Io,
                "a clean error, not an I/O failure: {err}"
            );
        }
    }
}

pub fn cow_isolation_of_siblings(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_with_file(d, "baselayer", "etc", "shared", b"baselayer");
    create(d, "a", Some("baselayer"));
    create(d, "b", Some("baselayer"));
    if child_mount_refused(ctx, "a") {
        return;
    }
    with_layer(d, "a", |root| {
        fs::write(root.join("etc/shared"), b"written by a").unwrap();
        fs::write(root.join("only-a"), b"a").unwrap();
    });
    with_layer(d, "b", |root| {
        assert_eq!(
            fs::read(root.join("etc/shared")).unwrap(),
            b"baselayer",
            "sibling b unaffected"
        );
        assert!(!root.join("only-a").exists());
        fs::remove_file(root.join("etc/shared")).unwrap();
    });
    with_layer(d, "a", |root| {
        assert_eq!(fs::read(root.join("etc/shared")).unwrap(), b"written by a");
    });
    with_layer(d, "baselayer", |root| {
        assert_eq!(
            fs::read(root.join("etc/shared")).unwrap(),
            b"baselayer",
            "parent unaffected"
        );
    });
}

// --- whiteouts -----------------------------------------------------------------

/// The parent of [`parent_and_child`]: /a/{keep,gone}, /b/{x,sub/y}.
fn parent_tar() -> Vec<u8> {
    TarBuild::new()
        .dir("a", 0o755)
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("b", 0o755)
        .file("b/x", b"x")
        .dir("b/sub", 0o755)
        .file("b/sub/y", b"y")
        .finish()
}

/// parent: /a/{keep,gone}, /b/{x,sub/y}; child: /a/gone deleted, /b
/// replaced. False when the child cannot be mounted (refusal asserted).
fn parent_and_child(ctx: &Ctx) -> bool {
    let d = ctx.d();
    layer_from_tar(d, "parent", None, &parent_tar());
    create(d, "child", Some("parent"));
    if child_mount_refused(ctx, "child") {
        return false;
    }
    with_layer(d, "child", |root| {
        fs::remove_file(root.join("a/gone")).unwrap();
        fs::remove_dir_all(root.join("b")).unwrap();
        fs::create_dir(root.join("b")).unwrap();
        fs::write(root.join("b/new"), b"new").unwrap();
    });
    true
}

pub fn deletions_and_opaque_dirs_through_diff_apply(ctx: &mut Ctx) {
    if !parent_and_child(ctx) {
        return;
    }
    let d = ctx.d();
    let tar = diff(d, "child", Some("parent"));
    create(d, "fresh", Some("parent"));
    apply(d, "fresh", Some("parent"), &tar);
    tree::assert_same(
        "fresh parent + diff(child)",
        &snapshot(d, "fresh"),
        &snapshot(d, "child"),
    );
    with_layer(d, "fresh", |root| {
        assert!(!root.join("a/gone").exists());
        assert!(!root.join("b/x").exists() && !root.join("b/sub").exists());
        assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"keep");
    });
}

pub fn whiteouts_in_diff(ctx: &mut Ctx) {
    if !parent_and_child(ctx) {
        return;
    }
    let d = ctx.d();
    let names = tarbuild::names(&diff(d, "child", Some("parent")));
    assert!(
        names.contains(&"a/.wh.gone".to_string()),
        "deleted file is a .wh. entry: {names:?}"
    );
    assert!(
        names.contains(&"b/.wh..wh..opq".to_string()),
        "replaced dir is opaque: {names:?}"
    );
    assert!(names.contains(&"b/new".to_string()), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("b/x") || n.starts_with("b/sub")),
        "{names:?}"
    );
    assert_eq!(
        change_list(d, "child", Some("parent")),
        ["C /a", "D /a/gone", "D /b", "A /b", "A /b/new"]
    );
}

/// Deletions and an opaque directory arriving in a tar, checked without
/// mounting anything: changes, the exported diff, its size, and the same
/// diff re-applied elsewhere (every backend, including those that cannot
/// mount layers with parents).
pub fn whiteouts_through_tars_only(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_from_tar(d, "parent", None, &parent_tar());
    let child = TarBuild::new()
        .dir("a", 0o755)
        .whiteout("a/gone")
        .dir("b", 0o755)
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"new")
        .finish();
    layer_from_tar(d, "child", Some("parent"), &child);
    let changes = change_list(d, "child", None);
    for want in ["C /a", "D /a/gone", "A /b/new"] {
        assert!(changes.contains(&want.to_string()), "{want} in {changes:?}");
    }
    let replaced = changes.contains(&"D /b".to_string()) && changes.contains(&"A /b".to_string());
    let explicit =
        changes.contains(&"D /b/x".to_string()) && changes.contains(&"D /b/sub".to_string());
    assert!(
        replaced || explicit,
        "b's old children are gone: {changes:?}"
    );
    assert!(
        !changes
            .iter()
            .any(|c| c.contains("/a/keep") || c.starts_with("A /b/x")),
        "{changes:?}"
    );
    let names = tarbuild::names(&diff(d, "child", None));
    assert!(names.contains(&"a/.wh.gone".to_string()), "{names:?}");
    assert!(names.contains(&"b/new".to_string()), "{names:?}");
    assert!(
        names.contains(&"b/.wh..wh..opq".to_string())
            || (names.contains(&"b/.wh.x".to_string()) && names.contains(&"b/.wh.sub".to_string())),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("b/x") || n.starts_with("b/sub") || n.starts_with("a/keep")),
        "{names:?}"
    );
    assert_eq!(d.diff_size(&id("child"), None).unwrap(), 3, "only b/new");
    let exported = diff(d, "child", None);
    layer_from_tar(d, "again", Some("parent"), &exported);
    let mut again = tarbuild::names(&diff(d, "again", None));
    let mut first = names.clone();
    again.sort();
    first.sort();
    assert_eq!(
        again, first,
        "the exported diff re-applies to the same diff"
    );
    assert_eq!(change_list(d, "again", None), changes);
}

pub fn rename_of_lower_file(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_with_file(d, "baselayer", "dir", "f", b"data");
    create(d, "child", Some("baselayer"));
    if child_mount_refused(ctx, "child") {
        return;
    }
    with_layer(d, "child", |root| {
        fs::rename(root.join("dir/f"), root.join("dir/g")).unwrap();
        assert_eq!(fs::read(root.join("dir/g")).unwrap(), b"data");
        assert!(!root.join("dir/f").exists());
    });
    with_layer(d, "baselayer", |root| {
        assert_eq!(fs::read(root.join("dir/f")).unwrap(), b"data");
        assert!(!root.join("dir/g").exists());
    });
    assert_eq!(
        change_list(d, "child", None),
        ["C /dir", "D /dir/f", "A /dir/g"]
    );
}

pub fn rename_of_lower_dir(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_with_file(d, "baselayer", "dir", "f", b"data");
    create(d, "child", Some("baselayer"));
    if child_mount_refused(ctx, "child") {
        return;
    }
    let exdev = ctx.caps.rename_lower_dir_exdev;
    with_layer(d, "child", |root| {
        match fs::rename(root.join("dir"), root.join("moved")) {
            Ok(()) => {
                assert!(
                    !exdev,
                    "renaming a lower directory was expected to fail with EXDEV"
                );
                assert_eq!(fs::read(root.join("moved/f")).unwrap(), b"data");
            }
            Err(e) => {
                assert!(exdev, "renaming a lower directory failed: {e}");
                assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
                assert_eq!(fs::read(root.join("dir/f")).unwrap(), b"data");
            }
        }
    });
}

pub fn hardlinks(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "src", None);
    with_layer(d, "src", |root| {
        fs::write(root.join("one"), b"linked").unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::hard_link(root.join("one"), root.join("d/two")).unwrap();
    });
    let tar = diff(d, "src", None);
    let listed = tarbuild::list(&tar);
    let kinds: Vec<_> = ["d/two", "one"]
        .iter()
        .map(|n| {
            listed
                .iter()
                .find(|e| e.0 == *n)
                .unwrap_or_else(|| panic!("{n} in the tar"))
        })
        .map(|e| (e.1, e.2))
        .collect();
    // Tar order is by path: d/two carries the data, one links to it.
    assert_eq!(
        kinds,
        [('0', 6), ('1', 0)],
        "the second link is a tar hardlink entry"
    );
    layer_from_tar(d, "dst", None, &tar);
    with_layer(d, "dst", |root| {
        let a = fs::metadata(root.join("one")).unwrap();
        let b = fs::metadata(root.join("d/two")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hardlink survives diff/apply");
        assert_eq!(a.nlink(), 2);
        assert_eq!(fs::read(root.join("d/two")).unwrap(), b"linked");
    });
}

// --- diff / apply ------------------------------------------------------------------

/// A tar with files, dirs, symlinks, hardlinks, xattrs, a sparse file, a
/// fifo and a device node.
fn rich_tar() -> Vec<u8> {
    let mut sparse = vec![0u8; 8 << 20];
    sparse[..4].copy_from_slice(b"head");
    let n = sparse.len();
    sparse[n - 4..].copy_from_slice(b"tail");
    TarBuild::new()
        .dir("bin", 0o755)
        .file_with("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755, 0, 0)
        .hardlink("bin/tool-link", "bin/tool")
        .dir("etc", 0o750)
        .file_with("etc/owned", b"owned by 1000", 0o640, 1000, 1000)
        .file_xattr("etc/tagged", b"with xattr", "user.thinsnap", b"value\0bin")
        .symlink("etc/abs", "/etc/owned")
        .symlink("etc/rel", "../bin/tool")
        .dir("var", 0o755)
        .file("var/sparse", &sparse)
        .fifo("var/fifo")
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3)
        .dir("empty", 0o700)
        .finish()
}

pub fn diff_apply_round_trip(ctx: &mut Ctx) {
    let d = ctx.d();
    let tar = rich_tar();
    // Not "l": overlay2 reserves that id for its link directory.
    create(d, "rich", None);
    let applied = apply(d, "rich", None, &tar);
    assert!(
        applied >= 8 << 20,
        "apply_diff reports the data it applied ({applied})"
    );
    with_layer(d, "rich", |root| {
        let sp = fs::metadata(root.join("var/sparse")).unwrap();
        assert_eq!(sp.len(), 8 << 20);
        assert!(
            sp.blocks() * 512 < 1 << 20,
            "zero blocks stay holes ({} blocks)",
            sp.blocks()
        );
        assert_eq!(
            xattr::get(root.join("etc/tagged"), "user.thinsnap")
                .unwrap()
                .as_deref(),
            Some(&b"value\0bin"[..])
        );
        assert_eq!(
            fs::metadata(root.join("bin/tool")).unwrap().mode() & 0o7777,
            0o4755
        );
    });
    let back = diff(d, "rich", None);
    let mut want = tarbuild::list(&tar);
    let mut got = tarbuild::list(&back);
    want.sort();
    got.sort();
    assert_eq!(
        got.iter().map(|e| (&e.0, e.1, e.2)).collect::<Vec<_>>(),
        want.iter().map(|e| (&e.0, e.1, e.2)).collect::<Vec<_>>(),
        "same entries"
    );
    assert!(got == want, "same contents");
    // And the tar re-applied elsewhere gives the same tree.
    layer_from_tar(d, "again", None, &back);
    tree::assert_same(
        "re-applied diff",
        &snapshot(d, "again"),
        &snapshot(d, "rich"),
    );
}

pub fn compressed_apply(ctx: &mut Ctx) {
    let d = ctx.d();
    let plain = TarBuild::new()
        .dir("d", 0o755)
        .file("d/f", b"compressed")
        .finish();
    let gz = tarbuild::gzip(&plain);
    let zst = zstd::stream::encode_all(plain.as_slice(), 3).unwrap();
    for (name, data) in [("plain", plain.clone()), ("gzip", gz), ("zstd", zst)] {
        create(d, name, None);
        let n = apply(d, name, None, &data);
        assert_eq!(n, 10, "{name}: applied bytes");
        with_layer(d, name, |root| {
            assert_eq!(fs::read(root.join("d/f")).unwrap(), b"compressed", "{name}");
        });
    }
}

pub fn changes_against_parent(ctx: &mut Ctx) {
    let d = ctx.d();
    let tar = TarBuild::new()
        .dir("etc", 0o755)
        .file("etc/hosts", b"old")
        .file("etc/passwd", b"root")
        .dir("var", 0o755)
        .dir("var/log", 0o755)
        .dir("untouched", 0o755)
        .file("untouched/f", b"")
        .finish();
    layer_from_tar(d, "baselayer", None, &tar);
    create(d, "child", Some("baselayer"));
    if child_mount_refused(ctx, "child") {
        return;
    }
    with_layer(d, "child", |root| {
        fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost").unwrap();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        fs::write(root.join("var/log/new.log"), b"log").unwrap();
        fs::set_permissions(root.join("untouched"), fs::Permissions::from_mode(0o700)).unwrap();
    });
    let got = change_list(d, "child", None);
    assert_eq!(
        got,
        [
            "C /etc",
            "C /etc/hosts",
            "D /etc/passwd",
            "C /untouched",
            "C /var",
            "C /var/log",
            "A /var/log/new.log",
        ]
    );
    assert_eq!(
        change_list(d, "child", Some("baselayer")),
        got,
        "explicit parent = recorded parent"
    );
    let all = change_list(d, "baselayer", None);
    assert!(
        all.iter().all(|c| c.starts_with("A ")),
        "no parent: all additions: {all:?}"
    );
    assert_eq!(all.len(), 7);
    let kinds: Vec<_> = d
        .changes(&id("child"), None)
        .unwrap()
        .iter()
        .map(|c| c.kind)
        .collect();
    assert!(kinds.contains(&ChangeKind::Delete));
}

pub fn diff_size(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_from_tar(
        d,
        "baselayer",
        None,
        &TarBuild::new()
            .file("small", b"abc")
            .file("gone", b"xyz")
            .finish(),
    );
    create(d, "child", Some("baselayer"));
    if child_mount_refused(ctx, "child") {
        return;
    }
    with_layer(d, "child", |root| {
        fs::write(root.join("big"), vec![7u8; 10_000]).unwrap();
        fs::write(root.join("small"), b"abcdef").unwrap();
        fs::remove_file(root.join("gone")).unwrap();
    });
    assert_eq!(d.diff_size(&id("child"), None).unwrap(), 10_000 + 6);
    assert_eq!(d.diff_size(&id("baselayer"), None).unwrap(), 6);
}

// --- containers ----------------------------------------------------------------------

pub fn container_init_layer(ctx: &mut Ctx) {
    let d = ctx.d();
    let image = TarBuild::new()
        .dir("etc", 0o755)
        .file("etc/hosts", b"image hosts")
        .file("etc/os-release", b"ID=test")
        .dir("dev", 0o755)
        .finish();
    layer_from_tar(d, "image", None, &image);
    let c = id("ctr");
    if let Some(word) = ctx.caps.child_mount_refused {
        // The init layer has a parent, so it cannot be mounted to populate.
        let err = container::create_container(d, &c, Some(&id("image")), &CreateOpts::default())
            .expect_err("a container needs its init layer mounted");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains(word), "{err}");
        assert!(
            !d.exists(&c) && !d.exists(&id("ctr-init")),
            "a refused container create leaves nothing"
        );
        assert!(ctx.mounts_left().is_empty());
        return;
    }
    container::create_container(d, &c, Some(&id("image")), &CreateOpts::default()).unwrap();
    assert!(d.exists(&id("ctr-init")) && d.exists(&c));
    assert_eq!(d.parent(&id("ctr-init")).unwrap(), Some(id("image")));
    assert_eq!(d.parent(&c).unwrap(), Some(id("ctr-init")));
    with_layer(d, "ctr", |root| {
        for (path, entry) in INIT_LAYER {
            let p = root.join(path.trim_start_matches('/'));
            let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!((md.uid(), md.gid()), (0, 0), "{path} is root-owned");
            match entry {
                InitEntry::Dir => assert!(md.is_dir(), "{path} is a directory"),
                InitEntry::File => {
                    assert!(md.is_file(), "{path} is a file");
                    assert_eq!(md.len(), 0, "{path} is empty");
                    assert_eq!(md.mode() & 0o7777, 0o755, "{path} mode");
                }
                InitEntry::Symlink(t) => assert_eq!(fs::read_link(&p).unwrap(), PathBuf::from(t)),
            }
        }
        assert_eq!(fs::read(root.join("etc/os-release")).unwrap(), b"ID=test");
    });
    assert_eq!(
        change_list(d, "ctr-init", None),
        [
            "A /.dockerenv",
            "C /dev",
            "A /dev/console",
            "A /dev/pts",
            "A /dev/shm",
            "C /etc",
            "A /etc/hostname",
            "C /etc/hosts",
            "A /etc/mtab",
            "A /etc/resolv.conf",
            "A /proc",
            "A /sys",
        ]
    );
    assert!(
        change_list(d, "ctr", None).is_empty(),
        "the container layer starts empty"
    );
    assert_kind(
        container::create_container(d, &c, Some(&id("image")), &CreateOpts::default()),
        ErrorKind::AlreadyExists,
        "container twice",
    );
    container::remove_container(d, &c).unwrap();
    assert!(!d.exists(&c) && !d.exists(&id("ctr-init")));
    assert!(d.exists(&id("image")));
    // An init layer left by an interrupted create does not block the next one.
    create(d, "again-init", Some("image"));
    container::create_container(d, &id("again"), Some(&id("image")), &CreateOpts::default())
        .unwrap();
    with_layer(d, "again", |root| {
        assert!(root.join(".dockerenv").is_file())
    });
    container::remove_container(d, &id("again")).unwrap();
    assert_kind(
        container::remove_container(d, &id("again")),
        ErrorKind::NotFound,
        "remove twice",
    );
}

// --- lifecycle -------------------------------------------------------------------------

pub fn remove_while_mounted(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "m", None);
    let _path = d.get(&id("m"), None).unwrap();
    assert_kind(d.remove(&id("m")), ErrorKind::Busy, "remove while mounted");
    assert!(d.exists(&id("m")));
    d.put(&id("m")).unwrap();
    d.remove(&id("m")).unwrap();
    assert!(!d.exists(&id("m")));
}

pub fn remove_parent_with_children(ctx: &mut Ctx) {
    let d = ctx.d();
    layer_from_tar(d, "p", None, &TarBuild::new().file("f", b"from p").finish());
    create(d, "c", Some("p"));
    match ctx.caps.parent_removal {
        ParentRemoval::HasChildren => {
            assert_kind(d.remove(&id("p")), ErrorKind::HasChildren, "remove parent");
            assert!(d.exists(&id("p")) && d.exists(&id("c")));
            d.remove(&id("c")).unwrap();
            d.remove(&id("p")).unwrap();
        }
        ParentRemoval::Allowed => {
            d.remove(&id("p")).unwrap();
            with_layer(d, "c", |root| {
                assert_eq!(fs::read(root.join("f")).unwrap(), b"from p")
            });
        }
    }
}

pub fn get_put_refcounting(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "r", None);
    let a = d.get(&id("r"), None).unwrap();
    let b = d.get(&id("r"), None).unwrap();
    assert_eq!(a, b, "every get returns the same path");
    let info = |d: &dyn Driver| {
        d.list()
            .unwrap()
            .into_iter()
            .find(|l| l.id == id("r"))
            .unwrap()
    };
    assert_eq!(info(d).mount_count, 2);
    d.put(&id("r")).unwrap();
    assert_eq!(info(d).mount_count, 1);
    assert_kind(
        d.remove(&id("r")),
        ErrorKind::Busy,
        "one get still outstanding",
    );
    assert!(a.join(".").is_dir(), "still usable after the first put");
    d.put(&id("r")).unwrap();
    assert_eq!(info(d).mount_count, 0);
    d.remove(&id("r")).unwrap();
    assert_kind(
        d.put(&id("r")),
        ErrorKind::NotFound,
        "put of a removed layer",
    );
}

pub fn cleanup_leaves_no_mounts(ctx: &mut Ctx) {
    create(ctx.d(), "x", None);
    create(ctx.d(), "y", Some("x"));
    if child_mount_refused(ctx, "y") {
        // Only layers without parent mount: check cleanup and reopen on x.
        with_layer(ctx.d(), "x", |root| {
            fs::write(root.join("kept"), b"across reopen").unwrap()
        });
        let _ = ctx.d().get(&id("x"), None).unwrap();
        ctx.d().cleanup().unwrap();
        assert!(ctx.mounts_left().is_empty());
        ctx.reopen();
        let d = ctx.d();
        assert!(d.exists(&id("x")) && d.exists(&id("y")), "the store stays");
        with_layer(d, "x", |root| {
            assert_eq!(fs::read(root.join("kept")).unwrap(), b"across reopen")
        });
        d.remove(&id("y")).unwrap();
        d.remove(&id("x")).unwrap();
        return;
    }
    with_layer(ctx.d(), "y", |root| {
        fs::write(root.join("kept"), b"across reopen").unwrap()
    });
    let _ = ctx.d().get(&id("x"), None).unwrap();
    let _ = ctx.d().get(&id("y"), None).unwrap();
    ctx.d().cleanup().unwrap();
    let left = ctx.mounts_left();
    assert!(left.is_empty(), "cleanup left mounts: {left:?}");
    ctx.reopen();
    let d = ctx.d();
    assert!(d.exists(&id("x")) && d.exists(&id("y")), "the store stays");
    with_layer(d, "y", |root| {
        assert_eq!(fs::read(root.join("kept")).unwrap(), b"across reopen")
    });
    d.remove(&id("y")).unwrap();
    d.remove(&id("x")).unwrap();
}

pub fn incomplete_layer_unusable(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "baselayer", None);
    let full = TarBuild::new()
        .file("big", &vec![1u8; 100_000])
        .file("after", b"x")
        .finish();
    let cut = &full[..full.len() / 2];
    create(d, "half", Some("baselayer"));
    let err = d
        .apply_diff(&id("half"), Some(&id("baselayer")), &mut &cut[..])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "truncated tar: {err}");
    assert!(d.exists(&id("half")));
    let info = d
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.id == id("half"))
        .unwrap();
    assert!(
        info.incomplete,
        "a failed apply leaves the layer incomplete"
    );
    assert_eq!(info.mount_count, 0, "a failed apply releases its mount");
    assert_kind(
        d.get(&id("half"), None),
        ErrorKind::Incomplete,
        "get of an incomplete layer",
    );
    assert_kind(
        d.create(&id("kid"), Some(&id("half")), &CreateOpts::default()),
        ErrorKind::Incomplete,
        "incomplete layer as parent",
    );
    assert!(!d.exists(&id("kid")));
    // Still incomplete after a restart.
    ctx.reopen();
    let d = ctx.d();
    assert_kind(
        d.get(&id("half"), None),
        ErrorKind::Incomplete,
        "after reopen",
    );
    d.remove(&id("half")).unwrap();
    layer_from_tar(d, "half", Some("baselayer"), &full);
    if child_mount_refused(ctx, "half") {
        let names = tarbuild::names(&diff(d, "half", None));
        assert!(names.contains(&"after".to_string()), "{names:?}");
        return;
    }
    with_layer(d, "half", |root| {
        assert_eq!(fs::read(root.join("after")).unwrap(), b"x")
    });
}

pub fn hostile_tar_refused(ctx: &mut Ctx) {
    let d = ctx.d();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), b"untouched").unwrap();
    let target = outside.path().to_string_lossy().into_owned();
    let tar = TarBuild::new()
        .symlink("escape", &target)
        .file("escape/victim", b"overwritten")
        .finish();
    create(d, "evil", None);
    let err = d.apply_diff(&id("evil"), None, &mut &tar[..]).unwrap_err();
    let msg = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{msg}");
    assert!(
        msg.contains("escape/victim"),
        "the error names the entry: {msg}"
    );
    assert_eq!(
        fs::read(outside.path().join("victim")).unwrap(),
        b"untouched"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    assert_kind(
        d.get(&id("evil"), None),
        ErrorKind::Incomplete,
        "refused tar leaves the layer incomplete",
    );
    d.remove(&id("evil")).unwrap();
}

pub fn usage_counts_data(ctx: &mut Ctx) {
    let d = ctx.d();
    create(d, "u", None);
    let empty = d.usage(&id("u")).unwrap();
    with_layer(d, "u", |root| {
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(root.join("data"), data).unwrap();
        let f = fs::File::open(root.join("data")).unwrap();
        f.sync_all().unwrap();
    });
    let used = d.usage(&id("u")).unwrap();
    assert!(
        used.bytes.0 >= empty.bytes.0 + (1 << 20),
        "usage grew by the data: {empty:?} -> {used:?}"
    );
    assert!(used.inodes > empty.inodes);
    assert_kind(
        d.usage(&id("nope")),
        ErrorKind::NotFound,
        "usage of unknown",
    );
    let _ = IoKind::NotFound;
}
