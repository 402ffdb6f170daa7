//! `--storage-opt` lists, one per line: errors yes, panics no.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| thinsnap::fuzzing::storage_options(data));
