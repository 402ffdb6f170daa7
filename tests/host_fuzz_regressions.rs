//! Replays every fuzz corpus seed and every input that once crashed a fuzz
//! target (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through
//! the same entry points `make fuzz` drives, on stable Rust.

use std::fs;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        if let Ok(dir) = fs::read_dir(base.join(kind).join(target)) {
            out.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

#[test]
fn metadata_parser_inputs() {
    let all = inputs("metadata_parser");
    assert!(all.len() >= 5, "seed corpus missing: {all:?}");
    for p in all {
        thinsnap::fuzzing::metadata_parser(&fs::read(&p).unwrap());
    }
}

#[test]
fn storage_options_inputs() {
    let all = inputs("storage_options");
    assert!(all.len() >= 3, "seed corpus missing: {all:?}");
    for p in all {
        thinsnap::fuzzing::storage_options(&fs::read(&p).unwrap());
    }
}

#[test]
fn tar_applier_inputs() {
    let all = inputs("tar_applier");
    assert!(all.len() >= 15, "seed corpus missing: {all:?}");
    for p in all {
        let dir = tempfile::tempdir().unwrap();
        thinsnap::fuzzing::tar_applier(&fs::read(&p).unwrap(), dir.path());
    }
}
