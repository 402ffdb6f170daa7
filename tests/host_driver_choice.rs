//! The driver chooser through the CLI (host, root): `auto` picks overlay2 on
//! an empty root here, an existing store's driver first, names other
//! drivers' layers it cannot see, and refuses to guess between several
//! stores; `status` and `doctor` print the same choice.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

struct Root {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tar: PathBuf,
}

impl Root {
    fn new() -> Root {
        common::require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let tar = dir.path().join("layer.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        fs::write(&tar, b.into_inner().unwrap()).unwrap();
        Root {
            _dir: dir,
            root,
            tar,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_thinsnap"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("THINSNAP_DRIVER")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
}

#[test]
fn auto_prefers_existing_stores_and_never_hides_layers_silently() {
    let r = Root::new();
    let tar = r.tar.to_str().unwrap();
    let status = r.ok(&["status"]);
    assert_eq!(line(&status, "Storage Driver:"), "overlay2", "{status}");
    assert!(line(&status, "Chosen:").contains("d_type"), "{status}");

    r.ok(&["--driver", "vfs", "import", "img", tar]);
    let status = r.ok(&["status"]);
    assert_eq!(line(&status, "Storage Driver:"), "vfs", "{status}");
    assert!(
        line(&status, "Chosen:").contains("a vfs store with layers already exists"),
        "{status}"
    );
    let doctor = r.ok(&["doctor"]);
    assert!(
        line(&doctor, "Driver for this store:").starts_with("vfs (auto:"),
        "{doctor}"
    );

    let status = r.ok(&["--driver", "overlay2", "status"]);
    assert_eq!(line(&status, "Storage Driver:"), "overlay2");
    assert!(
        line(&status, "WARNING:").starts_with("layers stored by vfs are not visible to overlay2"),
        "{status}"
    );
    let doctor = r.ok(&["--driver", "overlay2", "doctor"]);
    assert!(
        doctor.contains("layers stored by vfs are not visible to overlay2"),
        "{doctor}"
    );

    r.ok(&["--driver", "overlay2", "import", "img2", tar]);
    let out = r.run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("overlay2, vfs") && err.contains("--driver"),
        "{err}"
    );
    let out = r.run(&["inspect", "x"]);
    assert!(!out.status.success(), "every command refuses to guess");
    let out = r.run(&["doctor", "--json"]);
    assert!(
        !out.status.success(),
        "doctor fails when no driver can be chosen"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["choice"].is_null());
    assert!(
        json["choice_error"]
            .as_str()
            .unwrap()
            .contains("not visible"),
        "{json}"
    );
}
