//! `thinsnap-bench`: per-operation timings of thinsnap next to its peers,
//! measured in one run inside the test VM (`make bench`).
//!
//! - `run` (in the VM): the scenarios below; prints the samples as JSON
//!   between marker lines on stdout.
//! - `report LOG`: turns those samples into `docs/benchmarks.md` and
//!   `docs/benchmarks.svg` (medians, p95, ratios).
//!
//! Scenarios:
//! - `dm`: thin snapshot create, activate+mount, umount+deactivate, delete —
//!   thinsnap's library, the same kernel operations as raw ioctls through
//!   the `devicemapper` crate (the floor), and `dmsetup` (CLI peer).
//! - `grpc`: containerd's Snapshots API — a Prepare/Commit chain, read-write
//!   Prepares with Mounts, Removes — against containerd's built-in devmapper
//!   snapshotter and against `thinsnap serve` (devicemapper), one client.
//! - `backends`: every thinsnap backend on one workload: an image of stacked
//!   layers, then containers created (`-init` + rw), mounted, 1 MiB written
//!   over a file of the image (copy-up vs block CoW), unmounted, removed.
//! - `workload` (`peers.rs`): Docker 20.10's devicemapper driver (HTTP
//!   API), containerd's devmapper snapshotter and `thinsnap serve` (gRPC),
//!   thinsnap's library: a generated 100-layer image imported, 100
//!   containers created, mounted, written (1 MiB), unmounted, removed, then
//!   status and usage queries on a pool of 500 devices. The `dm` scenario
//!   also times LVM thin snapshots (`lvcreate -s`, CLI).
//! - `scaling`: thinsnap's create, status and usage at 10 → 1000 devices.

#[path = "../tests/common/docker.rs"]
mod docker;
mod floor;
mod peers;
mod report;
mod scenarios;

use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// One measured operation: every repetition's time in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub scenario: String,
    pub subject: String,
    pub op: String,
    pub ms: Vec<f64>,
}

pub const BEGIN: &str = "THINSNAP-BENCH-JSON-BEGIN";
pub const END: &str = "THINSNAP-BENCH-JSON-END";

fn usage() -> ExitCode {
    eprintln!(
        "usage: thinsnap-bench run [--quick] [--only dm,grpc,workload,backends,scaling]\n       thinsnap-bench report VM-OUTPUT [--md FILE] [--svg FILE]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => scenarios::run(&args[1..]),
        Some("report") => report::run(&args[1..]),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinsnap-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
