//! Randomised check of the central invariant: for any parent tree and any
//! sequence of changes making a child, applying `diff(child, parent)` to a
//! fresh copy of the parent reproduces the child, and the same tar stored as
//! an overlay upper dir reports the same changes and exports a tar that
//! does the same. Deterministic seeds, so a failure names its seed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;

/// xorshift64*: small, deterministic, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn all_paths(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut others) = (vec![root.to_path_buf()], Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                dirs.push(p.clone());
                stack.push(p);
            } else {
                others.push(p);
            }
        }
    }
    (dirs, others)
}

fn data(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(3) * 4096 + rng.below(300);
    let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    if len > 4096 && rng.chance(50) {
        v[..4096].fill(0); // a hole-able block
    }
    v
}

/// One random change somewhere under `root`.
fn mutate(root: &Path, rng: &mut Rng, serial: &mut u32) {
    let (dirs, others) = all_paths(root);
    *serial += 1;
    let new_name = |rng: &mut Rng, serial: u32| {
        let dir = &dirs[rng.below(dirs.len())];
        dir.join(format!("n{serial}"))
    };
    match rng.below(12) {
        0 => fs::write(new_name(rng, *serial), data(rng)).unwrap(),
        1 if !others.is_empty() => {
            let p = &others[rng.below(others.len())];
            if fs::metadata(p).is_ok_and(|m| m.is_file())
                && !fs::symlink_metadata(p).unwrap().is_symlink()
            {
                fs::write(p, data(rng)).unwrap();
            }
        }
        2 if !others.is_empty() => fs::remove_file(&others[rng.below(others.len())]).unwrap(),
        3 if dirs.len() > 1 => fs::remove_dir_all(&dirs[1 + rng.below(dirs.len() - 1)]).unwrap(),
        4 => fs::create_dir(new_name(rng, *serial)).unwrap(),
        5 if dirs.len() > 1 => {
            // Replace a directory wholesale.
            let d = &dirs[1 + rng.below(dirs.len() - 1)];
            fs::remove_dir_all(d).unwrap();
            fs::create_dir(d).unwrap();
            fs::write(d.join(format!("fresh{serial}")), data(rng)).unwrap();
        }
        6 => symlink(format!("../target{}", rng.below(5)), new_name(rng, *serial)).unwrap(),
        7 => {
            let all: Vec<_> = dirs[1..].iter().chain(&others).collect();
            if let Some(p) = all.get(rng.below(all.len().max(1)))
                && !fs::symlink_metadata(p).unwrap().is_symlink()
            {
                let mode = [0o755, 0o700, 0o644, 0o4755, 0o1777, 0o600][rng.below(6)];
                fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        8 if !others.is_empty() => {
            let p = &others[rng.below(others.len())];
            if fs::symlink_metadata(p).unwrap().is_file() {
                fs::hard_link(p, new_name(rng, *serial)).unwrap();
            }
        }
        9 if !others.is_empty() => {
            fs::rename(&others[rng.below(others.len())], new_name(rng, *serial)).unwrap()
        }
        10 if !others.is_empty() => {
            // A file becomes a directory.
            let p = &others[rng.below(others.len())];
            fs::remove_file(p).unwrap();
            fs::create_dir(p).unwrap();
            fs::write(p.join("inside"), b"x").unwrap();
        }
        11 if !others.is_empty() => {
            let p = &others[rng.below(others.len())];
            if fs::symlink_metadata(p).unwrap().is_file() {
                xattr::set(p, "user.prop", &rng.next().to_le_bytes()).unwrap();
            }
        }
        _ => fs::write(new_name(rng, *serial), b"fallback").unwrap(),
    }
}

/// Path → (type, mode, size, contents or target, mtime for non-dirs, xattrs).
fn describe(root: &Path) -> BTreeMap<String, String> {
    let (dirs, others) = all_paths(root);
    dirs[1..]
        .iter()
        .chain(&others)
        .map(|p| {
            let m = fs::symlink_metadata(p).unwrap();
            let body = if m.is_symlink() {
                format!("l {:?}", fs::read_link(p).unwrap())
            } else if m.is_dir() {
                "d".to_string()
            } else {
                let bytes = fs::read(p).unwrap();
                let mut h = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut h);
                let sum = std::hash::Hasher::finish(&h);
                format!("f {}:{sum:x} {}.{}", bytes.len(), m.mtime(), m.mtime_nsec())
            };
            let x = fsmeta::read_xattrs(p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, format!("{:o} {body} {x:?}", m.mode()))
        })
        .collect()
}

fn check_seed(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut serial = 0;
    let parent = tempfile::tempdir().unwrap();
    for _ in 0..25 {
        mutate(parent.path(), &mut rng, &mut serial);
    }
    let child = tempfile::tempdir().unwrap();
    copy_tree(parent.path(), child.path()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    for _ in 0..1 + rng.below(12) {
        mutate(child.path(), &mut rng, &mut serial);
    }
    let changes = changes_between(child.path(), Some(parent.path())).unwrap();
    let mut tar = Vec::new();
    write_tar(child.path(), &changes, &mut tar).unwrap();

    let want = describe(child.path());
    let fresh = tempfile::tempdir().unwrap();
    copy_tree(parent.path(), fresh.path()).unwrap();
    apply_tar(fresh.path(), &mut tar.as_slice(), WhiteoutFormat::Apply).unwrap();
    assert_eq!(
        describe(fresh.path()),
        want,
        "seed {seed}: parent + diff != child ({changes:?})"
    );

    for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Aufs] {
        let upper = tempfile::tempdir().unwrap();
        apply_tar(upper.path(), &mut tar.as_slice(), format).unwrap();
        let from_upper = changes_in_layer_dir(upper.path(), format, &[parent.path()]).unwrap();
        assert_eq!(
            from_upper, changes,
            "seed {seed}: {format:?} layer dir reports other changes"
        );
        let mut exported = Vec::new();
        write_layer_dir_tar(upper.path(), format, &mut exported).unwrap();
        let again = tempfile::tempdir().unwrap();
        copy_tree(parent.path(), again.path()).unwrap();
        apply_tar(
            again.path(),
            &mut exported.as_slice(),
            WhiteoutFormat::Apply,
        )
        .unwrap();
        assert_eq!(
            describe(again.path()),
            want,
            "seed {seed}: parent + exported {format:?} dir != child"
        );
    }
}

#[test]
fn diff_apply_reproduces_random_children() {
    for seed in 1..=100 {
        check_seed(seed);
    }
}
