//! The layer commands of the CLI on the vfs backend: import (chain ids),
//! changes, diff/apply, inspect, containers, refused ids, a failed import
//! left incomplete and redone, and kill -9 at every vfs/apply failpoint.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

struct Store {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

impl Store {
    fn new() -> Store {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        Store {
            _dir: dir,
            root,
            work,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinsnap"));
        c.arg("--driver")
            .arg("vfs")
            .arg("--root")
            .arg(&self.root)
            .args(args);
        c.env_remove("THINSNAP_FAILPOINTS");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and insists on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "thinsnap {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn tar(&self, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        let p = self.work.join(name);
        fs::write(&p, b.into_inner().unwrap()).unwrap();
        p
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn import_prints_chain_ids_and_reuses_layers() {
    let s = Store::new();
    let one = s.tar(
        "one.tar",
        &[("etc/os-release", b"ID=test\n"), ("bin/sh", b"#!")],
    );
    let two_plain = fs::read(s.tar("two.tar", &[("etc/motd", b"hello\n")])).unwrap();
    let two = s.work.join("two.tar.gz");
    fs::write(&two, gzip(&two_plain)).unwrap();
    let out = s.ok(&[
        "import",
        "img",
        one.to_str().unwrap(),
        two.to_str().unwrap(),
    ]);
    let ids: Vec<_> = out.lines().collect();
    // Docker's chain ids over the uncompressed tars.
    let d1 = sha256_hex(&fs::read(&one).unwrap());
    let d2 = sha256_hex(&two_plain);
    let c2 = sha256_hex(format!("sha256:{d1} sha256:{d2}").as_bytes());
    assert_eq!(ids, [d1.as_str(), c2.as_str()]);
    // Importing again finds the same layers.
    assert_eq!(
        s.ok(&[
            "import",
            "img",
            one.to_str().unwrap(),
            two.to_str().unwrap()
        ]),
        out
    );
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(s.root.join("thinsnap-images/img.json")).unwrap())
            .unwrap();
    assert_eq!(record["layers"][1]["diff_id"], format!("sha256:{d2}"));
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", &c2, "--json"])).unwrap();
    assert_eq!(inspect["parent"], d1.as_str());
    assert_eq!(inspect["incomplete"], false);
    assert_eq!(inspect["driver"], "vfs");
    assert_eq!(s.ok(&["changes", &c2]), "C /etc\nA /etc/motd\n");
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["changes", &c2, "--json"])).unwrap();
    assert_eq!(json[1]["Path"], "/etc/motd");
    assert_eq!(json[1]["Kind"], 1);
}

#[test]
fn diff_then_apply_reproduces_the_layer() {
    let s = Store::new();
    let base = s.tar("base.tar", &[("a/keep", b"k"), ("a/gone", b"g")]);
    let ids = s.ok(&["import", "img", base.to_str().unwrap()]);
    let base_id = ids.trim().to_string();
    s.ok(&["container", "create", "c1", "--image", "img"]);
    let layer = s.root.join("vfs/dir/c1");
    fs::remove_file(layer.join("a/gone")).unwrap();
    fs::write(layer.join("a/new"), b"new").unwrap();
    let tar = s.run(&["diff", "c1"]);
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let mut names: Vec<String> = tar::Archive::new(tar.stdout.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["a/", "a/.wh.gone", "a/new"]);
    let applied = s.with_stdin(&["apply", "copy", "--parent", "c1-init"], &tar.stdout);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&applied.stdout).trim(), "3");
    assert_eq!(s.ok(&["changes", "copy"]), s.ok(&["changes", "c1"]));
    let text = s.ok(&["inspect", "c1"]);
    assert!(text.contains("Parent:        c1-init"), "{text}");
    s.ok(&["rm", "copy"]);
    s.ok(&["container", "rm", "c1"]);
    assert!(!s.root.join("vfs/dir/c1-init").exists());
    assert!(s.root.join(format!("vfs/dir/{base_id}")).exists());
}

#[test]
fn hostile_ids_are_refused_before_touching_the_store() {
    let s = Store::new();
    s.ok(&[
        "import",
        "img",
        s.tar("x.tar", &[("f", b"x")]).to_str().unwrap(),
    ]);
    let before = fs::read_dir(s.root.join("vfs/dir")).unwrap().count();
    let long = "a".repeat(256);
    for bad in [
        "a/b",
        "..",
        "../etc",
        "a\nb",
        "a b",
        " lead",
        long.as_str(),
        ".hidden",
        "-flag",
    ] {
        // After `--`, so a leading `-` reaches the id check too.
        for args in [
            vec!["container", "create", "--image", "img", "--", bad],
            vec!["inspect", "--", bad],
            vec!["rm", "--", bad],
            vec!["import", "--", bad, "/dev/null"],
        ] {
            let out = s.run(&args);
            assert!(!out.status.success(), "{args:?} must fail");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("layer id"), "{args:?}: {err}");
        }
    }
    assert_eq!(
        fs::read_dir(s.root.join("vfs/dir")).unwrap().count(),
        before
    );
    assert!(!s.root.join("thinsnap-images/...json").exists());
}

#[test]
fn failed_import_leaves_an_incomplete_layer_that_import_redoes() {
    let s = Store::new();
    let good = fs::read(s.tar("good.tar", &[("big", &[5u8; 20_000]), ("after", b"x")])).unwrap();
    let cut = s.work.join("cut.tar");
    // Same first bytes, so the same diff id would not match: name the
    // truncated layer by applying it directly.
    fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let out = s.with_stdin(&["apply", "half"], &good[..good.len() / 2]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated") && err.contains("big"), "{err}");
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", "half", "--json"])).unwrap();
    assert_eq!(inspect["incomplete"], true);
    assert!(s.ok(&["inspect", "half"]).contains("INCOMPLETE"));
    let out = s.run(&["container", "create", "c", "--image", "half"]);
    assert!(!out.status.success(), "an incomplete layer is no parent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete"));
    // import of a truncated file fails, and a later import of the full tar
    // under the same chain id is not confused by it.
    let out = s.run(&["import", "img", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let cut_id = sha256_hex(&fs::read(&cut).unwrap());
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", &cut_id, "--json"])).unwrap();
    assert_eq!(inspect["incomplete"], true);
    // Re-running the same import removes the incomplete layer and retries
    // (still failing: the file is still truncated), never reusing it.
    let out = s.run(&["import", "img", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

/// kill -9 at a failpoint, then check the store recovers to a consistent state.
fn crash_at(point: &str, args: &[&str], s: &Store) {
    let out = s
        .cmd(args)
        .env("THINSNAP_FAILPOINTS", format!("{point}=kill"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the process was killed at the failpoint"
    );
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(p)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn kill_at_every_failpoint_recovers() {
    let points = thinsnap::backend::vfs::FAILPOINTS
        .iter()
        .chain(thinsnap::snapshot::naive::FAILPOINTS)
        .copied()
        .collect::<Vec<_>>();
    for point in points {
        let s = Store::new();
        let base = s.tar("base.tar", &[("etc/f", b"base")]);
        let top = s.tar("top.tar", &[("etc/g", b"top")]);
        let base_id = s
            .ok(&["import", "img", base.to_str().unwrap()])
            .trim()
            .to_string();
        let op: Vec<&str> = if point.starts_with("vfs.remove") {
            vec!["rm", base_id.as_str()]
        } else {
            vec![
                "import",
                "img",
                base.to_str().unwrap(),
                top.to_str().unwrap(),
            ]
        };
        if point.starts_with("vfs.remove") {
            crash_at(point, &op, &s);
            // The remove is either done or undone, never half: after the
            // next start the layer is gone or intact.
            let listed = s.run(&["inspect", &base_id, "--json"]);
            if listed.status.success() {
                assert_eq!(
                    fs::read(s.root.join(format!("vfs/dir/{base_id}/etc/f"))).unwrap(),
                    b"base",
                    "{point}"
                );
            }
            s.ok(&["import", "img", base.to_str().unwrap()]);
        } else {
            crash_at(point, &op, &s);
            // The next run recovers and the retried import succeeds.
            let ids = s.ok(&op);
            eprintln!(
                "{point}: retry printed {ids:?}; dirs {:?}",
                dir_names(&s.root.join("vfs/dir"))
            );
            let top_id = ids.lines().last().unwrap().to_string();
            assert_eq!(
                fs::read(s.root.join(format!("vfs/dir/{top_id}/etc/g"))).unwrap(),
                b"top",
                "{point}"
            );
        }
        assert!(
            dir_names(&s.root.join("vfs/tmp")).is_empty(),
            "{point}: temp leftovers"
        );
        let dirs = dir_names(&s.root.join("vfs/dir"));
        let metas: Vec<_> = dir_names(&s.root.join("vfs/meta"))
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(
            dirs, metas,
            "{point}: every layer has its record and vice versa"
        );
        for id in &dirs {
            let v: serde_json::Value =
                serde_json::from_str(&s.ok(&["inspect", id, "--json"])).unwrap();
            assert_eq!(
                v["incomplete"], false,
                "{point}: {id} left incomplete after a successful retry"
            );
        }
    }
}
