//! Docker's metadata files (device, transaction, deviceset): no panic,
//! and whatever parses round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| thinsnap::fuzzing::metadata_parser(data));
