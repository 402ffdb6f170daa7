//! thinsnap: a thin-provisioned block-device snapshot manager.
//!
//! Layers, bottom to top (see `docs/architecture.md`):
//! - [`dm`]: the device-mapper layer, the only code that talks to the
//!   kernel's dm ioctls and loop devices;
//! - [`metadata`]: the Docker-compatible JSON store (`metadata/base`,
//!   `deviceset-metadata`, `transaction-metadata`, one file per device);
//! - [`snapshot`]: the snapshot API (`Driver` trait, ids, errors, container
//!   init layers) and [`layer`], OCI layer tars in and out;
//! - [`backend`]: the implementations (devicemapper, overlay2, overlay,
//!   aufs, vfs, btrfs) and the driver chooser;
//! - [`cli`] and [`service`]: the admin CLI and the containerd snapshotter.

pub mod backend;
pub mod cli;
pub mod dm;
pub mod failpoint;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod layer;
pub mod metadata;
pub mod probe;
pub mod progress;
pub mod service;
pub mod snapshot;
pub mod units;
