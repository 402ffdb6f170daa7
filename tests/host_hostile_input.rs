//! Hostile input from outside, end to end through the `thinsnap` binary
//! and the service's socket: ids with '/', '..', newline, spaces, control
//! characters or over 255 bytes; malformed or out-of-range options;
//! unknown parents; hostile snapshot keys. Each gets a clear error naming
//! what was wrong, and nothing outside the store changes (a sentinel tree
//! next to it is checksummed before and after).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

fn thinsnap(root: &Path, driver: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thinsnap"))
        .arg("--root")
        .arg(root)
        .args(["--driver", driver])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hostile_ids_options_and_parents_get_clear_errors_and_touch_nothing() {
    common::require_root();
    let top = tempfile::tempdir().unwrap();
    let sentinel = top.path().join("sentinel");
    fs::create_dir_all(sentinel.join("etc")).unwrap();
    fs::write(sentinel.join("victim"), b"must never change").unwrap();
    fs::write(sentinel.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    let root = top.path().join("store");
    let (code, err) = thinsnap(&root, "vfs", &["create", "good"]);
    assert_eq!(code, 0, "{err}");
    let before = common::checksum_tree(&sentinel);
    let store_before = common::checksum_tree(&root);

    let long = "a".repeat(256);
    let cases: Vec<(String, &str)> = vec![
        ("../sentinel/victim".into(), "'/'"),
        ("..".into(), ".."),
        (".".into(), "."),
        ("a/b".into(), "'/'"),
        ("/etc/passwd".into(), "'/'"),
        ("with\nnewline".into(), "newline"),
        ("with space".into(), "whitespace"),
        ("tab\there".into(), "whitespace"),
        ("bell\u{7}".into(), "control character"),
        (long.clone(), "256"),
        ("".into(), "empty"),
    ];
    for (id, says) in &cases {
        for args in [
            vec!["create", id.as_str()],
            vec!["create", "x", "--parent", id.as_str()],
            vec!["mount", id.as_str()],
            vec!["rm", id.as_str()],
        ] {
            let (code, err) = thinsnap(&root, "vfs", &args);
            assert_ne!(code, 0, "{args:?} must fail");
            assert!(
                err.contains(says),
                "{args:?}: the error says what is wrong ({says}): {err}"
            );
            assert!(!err.contains("panicked"), "{args:?}: {err}");
        }
    }
    let options = [
        ("vfs", "vfs.bogus=1", "vfs.bogus"),
        ("overlay2", "overlay2.size=lots", "overlay2.size"),
        ("overlay2", "overlay2.nonsense", "overlay2.nonsense"),
        ("devicemapper", "dm.basesize=ten", "dm.basesize"),
        (
            "devicemapper",
            "dm.min_free_space=150%",
            "dm.min_free_space",
        ),
        ("devicemapper", "dm.blocksize=1000", "dm.blocksize"),
        ("devicemapper", "dm.thinp_percent=101", "dm.thinp_percent"),
        (
            "devicemapper",
            "dm.use_deferred_removal=perhaps",
            "dm.use_deferred_removal",
        ),
        ("devicemapper", "dm.bogus=1", "dm.bogus"),
        (
            "devicemapper",
            "dm.loopdatasize=99999999999999999999T",
            "dm.loopdatasize",
        ),
        (
            "devicemapper",
            "thinsnap.layout=../../etc",
            "thinsnap.layout",
        ),
    ];
    for (driver, opt, names) in options {
        let other = top.path().join(format!("opt-{driver}"));
        let (code, err) = thinsnap(&other, driver, &["-s", opt, "status"]);
        assert_ne!(code, 0, "{opt} must be refused");
        assert!(
            err.contains(names),
            "{opt}: the error names the option: {err}"
        );
        assert!(!err.contains("panicked"), "{opt}: {err}");
    }
    let (code, err) = thinsnap(&root, "vfs", &["create", "child", "--parent", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "names the unknown parent: {err}");
    assert_eq!(
        common::checksum_tree(&sentinel),
        before,
        "nothing outside the store changed"
    );
    assert_eq!(
        common::checksum_tree(&root),
        store_before,
        "refused requests left the store as it was"
    );
}
