//! kill -9 at every failpoint of the union backends (overlay2, overlay,
//! aufs, btrfs), through the CLI: after the crash the next command recovers
//! the store, the interrupted layer is either complete or gone (never half),
//! nothing is left in `.thinsnap/tmp`, and the operation can be redone.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output};

struct Store {
    driver: &'static str,
    root: PathBuf,
    work: PathBuf,
    _fs: Option<common::LoopFs>,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new(driver: &'static str) -> Store {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let work = dir.path().join("work");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&work).unwrap();
        let lfs = (driver == "btrfs")
            .then(|| common::LoopFs::new(&["mkfs.btrfs", "-q", "-f"], 256, &root));
        Store {
            driver,
            root,
            work,
            _fs: lfs,
            _dir: dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
        c.arg("--driver")
            .arg(self.driver)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("THINSNAP_FAILPOINTS");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.driver,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn tar(&self, name: &str, path: &str, data: &[u8]) -> String {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
        let p = self.work.join(name);
        fs::write(&p, b.into_inner().unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// The layer's diff as (path, contents) of its regular files.
    fn diff_files(&self, id: &str) -> Vec<(String, Vec<u8>)> {
        let out = self.run(&["diff", id]);
        assert!(
            out.status.success(),
            "diff {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files = Vec::new();
        let mut archive = tar::Archive::new(&out.stdout[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type().is_file() {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                files.push((e.path().unwrap().display().to_string(), data));
            }
        }
        files
    }

    fn tmp_entries(&self) -> usize {
        let tmp = self.root.join(self.driver).join(".thinsnap/tmp");
        fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0)
    }
}

fn killed_at(s: &Store, point: &str, args: &[&str]) {
    let out = s
        .cmd(args)
        .env("THINSNAP_FAILPOINTS", format!("{point}=kill"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the process was killed there (stderr: {})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a failpoint interrupts.
enum Op {
    /// Importing a single-layer image into an empty store.
    ImportBase,
    /// Importing a second layer on an existing base.
    ImportTop,
    /// Removing the (only) base layer.
    RemoveBase,
}

fn op_for(point: &str) -> Op {
    if point.contains(".remove.") {
        Op::RemoveBase
    } else if point.starts_with("snapshot.") {
        Op::ImportBase
    } else {
        Op::ImportTop
    }
}

fn check_point(driver: &'static str, point: &str) {
    let s = Store::new(driver);
    let base = s.tar("base.tar", "etc/f", b"base");
    let top = s.tar("top.tar", "etc/g", b"top");
    match op_for(point) {
        Op::ImportBase => {
            killed_at(&s, point, &["import", "img", &base]);
            let id = s.ok(&["import", "img", &base]).trim().to_string();
            assert_eq!(
                s.diff_files(&id),
                [("etc/f".to_string(), b"base".to_vec())],
                "{point}"
            );
        }
        Op::ImportTop => {
            s.ok(&["import", "img", &base]);
            killed_at(&s, point, &["import", "img", &base, &top]);
            let ids = s.ok(&["import", "img", &base, &top]);
            let top_id = ids.lines().last().unwrap();
            assert_eq!(
                s.diff_files(top_id),
                [("etc/g".to_string(), b"top".to_vec())],
                "{point}"
            );
        }
        Op::RemoveBase => {
            let id = s.ok(&["import", "img", &base]).trim().to_string();
            killed_at(&s, point, &["rm", &id]);
            // Either still complete or gone, never half.
            let inspect = s.run(&["inspect", &id]);
            if inspect.status.success() {
                assert_eq!(
                    s.diff_files(&id),
                    [("etc/f".to_string(), b"base".to_vec())],
                    "{point}"
                );
                s.ok(&["rm", &id]);
            } else {
                let err = String::from_utf8_lossy(&inspect.stderr);
                assert!(err.contains("does not exist"), "{point}: {err}");
            }
            s.ok(&["import", "img", &base]);
        }
    }
    assert_eq!(s.tmp_entries(), 0, "{driver} {point}: temp dir cleaned");
}

fn points(own: &[&'static str], naive: bool) -> Vec<&'static str> {
    let mut v = own.to_vec();
    if naive {
        v.extend(thinsnap::snapshot::naive::FAILPOINTS);
    }
    v
}

#[test]
fn overlay2_recovers_from_kill_at_every_failpoint() {
    for p in points(thinsnap::backend::overlay2::FAILPOINTS, false) {
        check_point("overlay2", p);
    }
}

#[test]
fn overlay_recovers_from_kill_at_every_failpoint() {
    for p in points(thinsnap::backend::overlay::FAILPOINTS, true) {
        check_point("overlay", p);
    }
}

#[test]
fn aufs_recovers_from_kill_at_every_failpoint() {
    for p in points(thinsnap::backend::aufs::FAILPOINTS, false) {
        check_point("aufs", p);
    }
}

#[test]
fn btrfs_recovers_from_kill_at_every_failpoint() {
    for p in points(thinsnap::backend::btrfs::FAILPOINTS, true) {
        check_point("btrfs", p);
    }
}
