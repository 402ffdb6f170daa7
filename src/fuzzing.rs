//! Entry points the fuzz targets (`fuzz/`) and their regression test
//! (`tests/host_fuzz_regressions.rs`) share: each takes arbitrary bytes and
//! must return without panicking; each also checks a property that would
//! otherwise go unnoticed (round trips, containment).

use std::path::Path;

use crate::backend::devmapper::DmStoreOptions;
use crate::layer::{WhiteoutFormat, apply_tar};
use crate::metadata::types::{DevInfo, DeviceSetMeta, Transaction};

/// Docker's metadata files: whatever parses must serialise and parse back
/// to the same value.
pub fn metadata_parser(data: &[u8]) {
    fn round_trip<T>(data: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        // A panic here is the finding the fuzzer reports.
        let Ok(v) = serde_json::from_slice::<T>(data) else {
            return;
        };
        match serde_json::to_vec(&v).map(|b| serde_json::from_slice::<T>(&b)) {
            Ok(Ok(back)) => assert_eq!(back, v, "round trip changed the value"),
            Ok(Err(e)) => panic!("own output does not parse: {e}"),
            Err(e) => panic!("a parsed value does not serialise: {e}"),
        }
    }
    round_trip::<DevInfo>(data);
    round_trip::<Transaction>(data);
    round_trip::<DeviceSetMeta>(data);
}

/// `--storage-opt` lists (one option per line): errors are fine, panics
/// and accepting a malformed size are not.
pub fn storage_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let opts: Vec<String> = text.lines().map(str::to_string).collect();
    if let Ok(o) = DmStoreOptions::parse(&opts) {
        assert!(o.min_free_space_percent < 100);
    }
    for line in text.lines() {
        let _ = crate::units::parse_size(line);
    }
}

/// A layer tar applied under `dir/root`: errors are fine; nothing may be
/// created outside `root` (the caller checks `dir` for strays).
pub fn tar_applier(data: &[u8], dir: &Path) {
    let root = dir.join("root");
    if std::fs::create_dir_all(&root).is_err() {
        return;
    }
    for format in [WhiteoutFormat::Apply, WhiteoutFormat::Overlay] {
        let _ = apply_tar(&root, &mut &data[..], format);
    }
    let strays: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "root")
                .collect()
        })
        .unwrap_or_default();
    assert!(strays.is_empty(), "the tar escaped its root: {strays:?}");
}
