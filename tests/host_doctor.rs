//! `thinsnap doctor` on the host: this kernel has no device-mapper, and
//! doctor must say so plainly and still recommend a driver that works.

mod common;

use std::process::Command;

fn doctor(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_thinsnap"))
        .arg("--root")
        .arg(dir.path().join("store"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The value printed after `key` on its line.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
}

#[test]
fn doctor_reports_device_mapper_state_and_a_driver() {
    let (ok, text) = doctor(&[]);
    assert!(ok, "doctor failed:\n{text}");
    let dm_present = std::path::Path::new("/dev/mapper/control").exists();
    if dm_present {
        assert_eq!(field(&text, "/dev/mapper/control:"), "present", "{text}");
    } else {
        assert_eq!(field(&text, "/dev/mapper/control:"), "MISSING", "{text}");
        assert!(
            field(&text, "device-mapper problem:").contains("device-mapper is missing"),
            "{text}"
        );
    }
    assert!(!field(&text, "Recommended driver:").is_empty(), "{text}");
    assert_eq!(field(&text, "Supports d_type:"), "yes", "{text}");
}

#[test]
fn doctor_json_is_machine_readable() {
    let (ok, text) = doctor(&["--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.ends_with("\toverlay"));
    assert_eq!(v["filesystems"]["overlay"], overlay);
    if overlay {
        assert_eq!(v["recommendation"]["driver"], "overlay2");
    }
    assert_eq!(
        v["device_mapper"]["control_present"],
        std::path::Path::new("/dev/mapper/control").exists()
    );
}
