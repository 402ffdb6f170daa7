//! overlay2 on the host (root): Docker's exact on-disk layout for an image
//! and a container (as seed 000 shows it), 129-layer chains mounted with
//! short `l/` names and the refused 130th layer, mount descriptions for
//! containerd, and the refusal of a backing filesystem without d_type.

mod common;
#[allow(unused_macros)]
mod conformance;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use conformance::tarbuild::TarBuild;
use thinsnap::backend::overlay2::Overlay2Driver;
use thinsnap::snapshot::container;
use thinsnap::snapshot::{CreateOpts, Driver, ErrorKind, LayerId};

fn id(s: &str) -> LayerId {
    LayerId::new(s).unwrap()
}

/// A store in a fresh temp dir; everything mounted below it is unmounted
/// on drop, also when the test panics.
struct Store {
    d: Overlay2Driver,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        fs::create_dir(&root).unwrap();
        Store {
            d: Overlay2Driver::open(&root, &[]).unwrap(),
            root,
            _dir: dir,
        }
    }

    fn home(&self) -> PathBuf {
        self.root.join("overlay2")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.d.cleanup();
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// mountinfo's super options (`lowerdir=...`) of the mount on `point`.
fn mount_options(point: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        if Path::new(fields[4]) != point {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        assert_eq!(fields[dash + 1], "overlay", "{l}");
        Some(fields[dash + 3].to_string())
    })
}

fn hex_id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

#[test]
fn docker_layout_of_an_image_and_a_container() {
    let s = Store::new();
    let d = &s.d;
    let home = s.home();
    let layers: Vec<String> = (1..=4).map(hex_id).collect();
    for (k, layer) in layers.iter().enumerate() {
        let parent = (k > 0).then(|| id(&layers[k - 1]));
        d.create(&id(layer), parent.as_ref(), &CreateOpts::default())
            .unwrap();
        let tar = TarBuild::new()
            .dir("etc", 0o755)
            .file(&format!("etc/layer-{k}"), layer.as_bytes())
            .finish();
        d.apply_diff(&id(layer), parent.as_ref(), &mut &tar[..])
            .unwrap();
    }
    let ctr = id(&hex_id(0xc0));
    let init = ctr.init_layer().unwrap();
    container::create_container(d, &ctr, Some(&id(&layers[3])), &CreateOpts::default()).unwrap();

    // <root>/overlay2: l/ and one directory per layer, all 0700.
    let mut want: Vec<String> = layers.clone();
    want.push(ctr.to_string());
    want.push(init.to_string());
    want.push("l".into());
    want.sort();
    assert_eq!(names(&home), want);
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("l")), 0o700);

    // l/<26 chars> -> ../<id>/diff, and <id>/link names it (no newline).
    let all: Vec<LayerId> = layers
        .iter()
        .map(|l| id(l))
        .chain([init.clone(), ctr.clone()])
        .collect();
    assert_eq!(names(&home.join("l")).len(), all.len());
    let mut link_of = BTreeMap::new();
    for layer in &all {
        let dir = home.join(layer.as_str());
        assert_eq!(mode(&dir), 0o700, "{layer}");
        assert_eq!(mode(&dir.join("diff")), 0o755, "{layer}");
        assert_eq!(mode(&dir.join("link")), 0o644, "{layer}");
        let link = fs::read_to_string(dir.join("link")).unwrap();
        assert_eq!(link.len(), 26, "{link:?}");
        assert!(
            link.bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)),
            "{link}"
        );
        assert_eq!(
            fs::read_link(home.join("l").join(&link)).unwrap(),
            PathBuf::from(format!("../{layer}/diff"))
        );
        link_of.insert(layer.clone(), link);
    }
    // The bottom layer has only diff and link; the others lower and work.
    assert_eq!(names(&home.join(&layers[0])), ["diff", "link"]);
    for layer in all.iter().skip(1) {
        assert_eq!(
            names(&home.join(layer.as_str())),
            ["diff", "link", "lower", "work"],
            "{layer}"
        );
        let dir = home.join(layer.as_str());
        assert_eq!(mode(&dir.join("work")), 0o700);
        assert_eq!(mode(&dir.join("lower")), 0o644);
    }
    // lower = l/<parent>:l/<grandparent>:..., nearest first, no newline:
    // 28, 57, 86 bytes for the image, 115 for -init, 144 for the container.
    for (k, layer) in all.iter().enumerate().skip(1) {
        let lower = fs::read_to_string(home.join(layer.as_str()).join("lower")).unwrap();
        let expect: Vec<String> = all[..k]
            .iter()
            .rev()
            .map(|p| format!("l/{}", link_of[p]))
            .collect();
        assert_eq!(lower, expect.join(":"), "{layer}");
        assert_eq!(lower.len(), 29 * k - 1, "{layer}");
    }

    // The init layer's diff: what Docker puts there, root-owned, 0755 files.
    let idiff = home.join(init.as_str()).join("diff");
    assert_eq!(
        names(&idiff.join("etc")),
        ["hostname", "hosts", "mtab", "resolv.conf"]
    );
    assert_eq!(names(&idiff.join("dev")), ["console", "pts", "shm"]);
    assert_eq!(
        fs::read_link(idiff.join("etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );
    for f in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev/console",
    ] {
        let md = fs::symlink_metadata(idiff.join(f)).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.len(), md.uid()),
            (0o755, 0, 0),
            "{f}"
        );
    }
    assert_eq!(names(&home.join(ctr.as_str()).join("diff")).len(), 0);

    // Mounting the container: merged/ is an overlay with the container's
    // diff as upper and work/work created by the kernel.
    let merged = d.get(&ctr, None).unwrap();
    assert_eq!(merged, home.join(ctr.as_str()).join("merged"));
    assert_eq!(
        names(&home.join(ctr.as_str())),
        ["diff", "link", "lower", "merged", "work"]
    );
    let opts = mount_options(&merged).expect("merged is mounted");
    assert!(
        opts.contains(&format!(
            "upperdir={}",
            home.join(ctr.as_str()).join("diff").display()
        )),
        "{opts}"
    );
    assert!(home.join(ctr.as_str()).join("work/work").is_dir());
    assert_eq!(
        fs::read(merged.join("etc/layer-3")).unwrap(),
        layers[3].as_bytes()
    );
    assert!(merged.join(".dockerenv").is_file());
    fs::write(merged.join("etc/new"), b"container").unwrap();
    assert_eq!(
        fs::read(home.join(ctr.as_str()).join("diff/etc/new")).unwrap(),
        b"container"
    );
    d.put(&ctr).unwrap();
    assert!(mount_options(&merged).is_none());
    assert!(!merged.exists(), "put removes merged/ as Docker does");

    // docker inspect's GraphDriver.Data.
    let md = d.metadata(&ctr).unwrap();
    let lowers: Vec<String> = all[..5]
        .iter()
        .rev()
        .map(|p| home.join(p.as_str()).join("diff").display().to_string())
        .collect();
    assert_eq!(md["LowerDir"], lowers.join(":"));
    assert_eq!(
        md["UpperDir"],
        home.join(ctr.as_str()).join("diff").display().to_string()
    );
    assert_eq!(
        md["WorkDir"],
        home.join(ctr.as_str()).join("work").display().to_string()
    );
    assert_eq!(md["MergedDir"], merged.display().to_string());
    let status: BTreeMap<_, _> = d.status().unwrap().into_iter().collect();
    assert_eq!(status["Backing Filesystem"], "extfs");
    assert_eq!(status["Supports d_type"], "true");
    assert_eq!(status["Native Overlay Diff"], "true");

    container::remove_container(d, &ctr).unwrap();
    assert_eq!(
        names(&home.join("l")).len(),
        4,
        "links go with their layers"
    );
}

#[test]
fn chain_of_129_mounts_with_short_links_and_the_130th_is_refused() {
    let s = Store::new();
    let d = &s.d;
    let home = s.home();
    for k in 1..=129 {
        let parent = (k > 1).then(|| id(&format!("layer-{}", k - 1)));
        d.create(
            &id(&format!("layer-{k}")),
            parent.as_ref(),
            &CreateOpts::default(),
        )
        .unwrap();
        fs::write(home.join(format!("layer-{k}/diff/file-{k}")), k.to_string()).unwrap();
    }
    let top = id("layer-129");
    let lower = fs::read_to_string(home.join("layer-129/lower")).unwrap();
    assert_eq!(lower.split(':').count(), 128);
    let merged = d.get(&top, None).unwrap();
    let opts = mount_options(&merged).expect("the top is mounted");
    // Absolute paths would not fit in a page: the mount names the lowers
    // relative to <root>/overlay2, as Docker does.
    assert!(opts.contains(&format!("lowerdir={lower}")), "{opts}");
    assert!(opts.contains("upperdir=layer-129/diff"), "{opts}");
    for k in 1..=129 {
        assert_eq!(
            fs::read_to_string(merged.join(format!("file-{k}"))).unwrap(),
            k.to_string()
        );
    }
    assert_eq!(fs::read_dir(&merged).unwrap().count(), 129);
    d.put(&top).unwrap();

    let over = id("layer-130");
    let err = d
        .create(&over, Some(&top), &CreateOpts::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("129 lower layers") && msg.contains("at most 128"),
        "{msg}"
    );
    assert!(!d.exists(&over));
    assert!(!home.join("layer-130").exists());
    assert_eq!(names(&home.join("l")).len(), 129, "no link left behind");
    assert_eq!(fs::read_dir(home.join(".thinsnap/tmp")).unwrap().count(), 0);
}

#[test]
fn mount_specs_for_containerd_mount_and_views_refuse_writes() {
    let s = Store::new();
    let d = &s.d;
    d.create(&id("base"), None, &CreateOpts::default()).unwrap();
    fs::write(s.home().join("base/diff/f"), b"base").unwrap();
    d.create(&id("top"), Some(&id("base")), &CreateOpts::default())
        .unwrap();
    let target = s._dir.path().join("target");
    fs::create_dir(&target).unwrap();

    let rw = d.mounts(&id("top"), false).unwrap();
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0].kind, "overlay");
    thinsnap::snapshot::mountspec::perform(&rw[0], &target).unwrap();
    assert_eq!(fs::read(target.join("f")).unwrap(), b"base");
    fs::write(target.join("g"), b"written").unwrap();
    nix::mount::umount(&target).unwrap();
    assert_eq!(fs::read(s.home().join("top/diff/g")).unwrap(), b"written");

    for layer in ["top", "base"] {
        let ro = d.mounts(&id(layer), true).unwrap();
        assert!(ro[0].is_readonly(), "{ro:?}");
        thinsnap::snapshot::mountspec::perform(&ro[0], &target).unwrap();
        assert_eq!(fs::read(target.join("f")).unwrap(), b"base");
        let err = fs::write(target.join("h"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{layer}: {err}");
        nix::mount::umount(&target).unwrap();
    }
    d.set_incomplete(&id("top"), true).unwrap();
    assert_eq!(
        d.mounts(&id("top"), false).unwrap_err().kind(),
        ErrorKind::Incomplete
    );
}

#[test]
fn refuses_a_backing_filesystem_without_d_type() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    fs::create_dir(&root).unwrap();
    // ext4 without the filetype feature: readdir reports DT_UNKNOWN.
    let _fs = common::LoopFs::new(&["mkfs.ext4", "-q", "-F", "-O", "^filetype"], 64, &root);
    assert!(!thinsnap::probe::supports_d_type(&root).unwrap());
    let err = Overlay2Driver::open(&root, &[]).err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("d_type") && msg.contains("whiteouts"), "{msg}");
    assert!(msg.contains("ftype=1"), "says how to fix it: {msg}");
}

#[test]
fn a_root_reached_through_a_symlink_is_resolved() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
    let d = Overlay2Driver::open(&dir.path().join("link"), &[]).unwrap();
    d.create(&id("a"), None, &CreateOpts::default()).unwrap();
    d.create(&id("b"), Some(&id("a")), &CreateOpts::default())
        .unwrap();
    let merged = d.get(&id("b"), None).unwrap();
    let real = fs::canonicalize(dir.path().join("real")).unwrap();
    assert_eq!(merged, real.join("overlay2/b/merged"));
    assert!(
        mount_options(&merged).is_some(),
        "mountinfo shows the real path"
    );
    d.cleanup().unwrap();
    assert!(
        mount_options(&merged).is_none(),
        "cleanup found and unmounted it"
    );
}
