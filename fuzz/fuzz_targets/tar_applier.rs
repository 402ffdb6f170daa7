//! Layer tars applied into a fresh directory: errors yes, panics and
//! anything written outside the layer's root no.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(dir) = tempfile::tempdir() {
        thinsnap::fuzzing::tar_applier(data, dir.path());
    }
});
