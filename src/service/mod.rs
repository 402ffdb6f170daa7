//! `thinsnap serve`: the containerd proxy snapshotter.
//!
//! - [`model`]: the service's own types and errors (no protobuf);
//! - [`records`]: snapshot records in redb, with intents for crash repair;
//! - [`snapshots`]: containerd's Snapshotter semantics over any backend;
//! - [`filter`]: containerd's filter syntax for `Walk`;
//! - [`locks`]: per-key locks;

// tonic handlers and conversions return `Result<_, tonic::Status>` by design;
// boxing the status everywhere would fight the generated API.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod config;
pub mod convert;
pub mod filter;
pub mod grpc;
pub mod instance;
pub mod locks;
pub mod model;
pub mod published;
pub mod records;
pub mod remover;
pub mod server;
pub mod snapshots;
pub mod socket;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod grpc_tests;
